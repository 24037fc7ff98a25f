"""`mmtok batch --ray`: the same records, computed by a pool of Ray actors (many GPUs, many nodes).

The driver (this process) reads and checks the input exactly as the local path does, hands the
items to a Ray Data pipeline whose stateful actors each load the model once and run the local
`BatchRunner` on their blocks, and streams the records back in input order (`preserve_order`), so
writing, flushing, `--resume`, progress and the summary are the local ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .batch import BatchOptions, Summary
from .errors import MmtokError, UsageError
from .io import Item

INSTALL_HINT = "--ray needs Ray Data: pip install 'mmtok-cli[ray]' (or pip install 'ray[data]')"


@dataclasses.dataclass
class RayOptions:
    address: str | None = None
    """A running cluster ('auto', 'ray://host:10001', host:port); None starts a local Ray instance."""
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0


def import_ray() -> Any:
    # stderr belongs to our progress and summary: keep Ray's C++ core and Python loggers quiet.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra; plain `ray` lacks it)
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return ray


class _Worker:
    """One actor: loads the model once, then answers blocks of items with the local batch code."""

    def __init__(
        self, model: str, device: str, dtype: str, options: dict[str, Any], base: str, agent_model: str | None = None,
        cache_mb: int | None = None, pan_and_scan: bool | None = None,
    ) -> None:
        from .batch import BatchRunner
        from .engine import Engine
        from .quiet import quiet_libraries

        quiet_libraries()  # a worker's stderr reaches the driver's terminal: the same quiet as the CLI
        self.runner, self.error = None, None
        try:
            engine = Engine(model, device=device, dtype=dtype, agent_model=agent_model, cache_mb=cache_mb,
                            pan_and_scan=pan_and_scan)
        except Exception as exc:  # e.g. the model is missing on this node: its items say so, Ray stays calm
            reason = str(exc) if isinstance(exc, MmtokError) else root_cause(exc)
            self.error = f"Ray worker could not load the model: {reason}"
            return
        self.runner = BatchRunner(engine, BatchOptions(**options), base=Path(base))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from .io import record

        items = [Item(**json.loads(text)) for text in batch["item"]]
        records: list[dict[str, Any]] = []
        if self.runner is None:
            records = [record(item, None, error=item.error or self.error) for item in items]
        else:
            self.runner.run(items, records.extend)
        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


def run_on_ray(
    items: Iterable[Item],
    emit: Callable[[list[dict[str, Any]]], None],
    progress: Callable[[int, Summary], None] | None,
    *,
    model: str,
    device: str,
    dtype: str,
    options: BatchOptions,
    base: Path,
    ray_options: RayOptions,
    agent_model: str | None = None,
    cache_mb: int | None = None,
    pan_and_scan: bool | None = None,
) -> Summary:
    """Run `items` on a Ray actor pool; records reach `emit` in input order, one group per block.

    `agent_model`: each actor also loads this second model for the agent's first pass (`options.agent`).
    `cache_mb`: each actor's vision-token cache (`Engine`), which lives as long as the actor.
    `pan_and_scan`: each actor's `Engine(pan_and_scan=)` (Gemma 3).
    """
    ray = import_ray()
    if ray_options.workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {ray_options.workers})")
    rows = [{"item": json.dumps(dataclasses.asdict(item))} for item in items]
    summary = Summary(batch_size=options.batch_size)
    if not rows:
        return summary
    started = not ray.is_initialized()
    if started:
        local = {}
        if ray_options.address is None:
            # Logical CPU slots: every actor, plus one for Ray Data's own tasks, must fit, or the pool
            # waits forever for an actor that cannot be placed (2 workers on a 2-core machine).
            need = math.ceil(ray_options.workers * ray_options.cpus_per_worker) + 1
            local = {"num_cpus": max(os.cpu_count() or 1, need)}
        try:
            ray.init(address=ray_options.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True, **local)
        except Exception as exc:  # ConnectionError, ValueError... depending on the address
            where = ray_options.address or "a local instance"
            raise MmtokError(f"could not start or reach Ray at {where}: {root_cause(exc)}") from None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # records in input order, as the local path writes them
    context.enable_progress_bars = False  # ours is on stderr already
    context.print_on_execution_start = False

    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // options.batch_size,
                                                                       4 * ray_options.workers)))
    answered = dataset.map_batches(
        _Worker,
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=ray_options.workers),
        num_gpus=ray_options.gpus_per_worker or None,
        num_cpus=ray_options.cpus_per_worker,
        fn_constructor_kwargs={
            "model": model, "device": device, "dtype": dtype,
            "options": dataclasses.asdict(options), "base": str(Path(base).resolve()), "agent_model": agent_model,
            "cache_mb": cache_mb, "pan_and_scan": pan_and_scan,
        },
    )
    start = time.perf_counter()
    try:
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            records = [json.loads(text) for text in batch["record"]]
            emit(records)
            for rec in records:
                summary.count(rec)
            summary.wall_s = time.perf_counter() - start
            if progress:
                progress(len(records), summary)
    except (KeyboardInterrupt, MmtokError):
        raise
    except Exception as exc:  # a worker died (e.g. the model could not load there): one line
        raise MmtokError(f"the Ray job failed: {root_cause(exc)}") from exc
    finally:
        if started:  # we started it, so we stop it (a cluster given by --ray-address keeps running)
            ray.shutdown()
    summary.wall_s = time.perf_counter() - start
    return summary


def root_cause(exc: BaseException) -> str:
    """The innermost message of a Ray error chain (Ray wraps worker exceptions several times)."""
    seen = exc
    while True:  # Ray keeps the worker's exception in .cause; Python chains use __cause__
        inner = getattr(seen, "cause", None) or seen.__cause__
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    text = str(seen).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(seen).__name__
