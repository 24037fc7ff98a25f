"""Checks shared by the per-family tests."""

import json
import time
from collections import defaultdict
from functools import wraps

from .conftest import noise_image
from .device import TEST_DEVICE

SIZES = [(160, 120), (90, 200), (300, 300)]  # different aspect ratios and sizes
QUESTIONS = ["What is on the table?", "Is there a red circle?", "Describe the photo in detail."]


def assert_batch_equals_one_by_one(engine, budget_sets, *, sizes=SIZES, new_tokens=8):
    """Each budget set runs as one batch of differently sized images; every row equals its image alone."""
    images = [noise_image(10 + i, size) for i, size in enumerate(sizes)]
    for budgets in budget_sets:
        batch = engine.run(images, QUESTIONS, tokens=budgets, max_new_tokens=new_tokens)
        for image, question, k, got in zip(images, QUESTIONS, budgets, batch):
            alone = engine.ask(image, question, tokens=k, max_new_tokens=new_tokens)
            assert got.kept_indices == alone.kept_indices and got.vision_kept == min(k, got.vision_total)
            assert got.output_ids == alone.output_ids
            assert got.prompt_pruned == alone.prompt_pruned
        assert len({row.prompt_unpruned for row in batch}) > 1  # the rows really were padded


def ray_and_local_records(
    data, model, *, workers: int = 1, batch_size: int = 2, extra: tuple[str, ...] = ()
) -> tuple[list[dict], list[dict]]:
    """`mmtok batch DATA` run locally and with `--ray --workers N` on the same options (float32, 3 new tokens, then
    `extra`): each run's records without the clock-dependent fields (Ray's first, then the local run's)."""
    from typer.testing import CliRunner

    from mmtok_cli.cli import app

    from .test_ray import comparable

    runner = CliRunner()
    common = [str(data), "--model", str(model), "--max-new-tokens", "3", "--batch-size", str(batch_size),
              "--device", TEST_DEVICE, "--dtype", "float32", *extra]
    local = runner.invoke(app, ["batch", *common])
    out = data.with_name("ray.jsonl")
    distributed = runner.invoke(app, ["batch", *common, "--out", str(out), "--ray", "--workers", str(workers)])
    assert local.exit_code == distributed.exit_code == 0, distributed.stderr
    rows = [[json.loads(line) for line in text.splitlines()] for text in (out.read_text(), local.stdout)]
    return comparable(rows[0]), comparable(rows[1])


class StageClocks:
    """Clocks around the calls inside each stage `Answer.timings_ms` reports, put on one engine by `monkeypatch`:
    the adapter's `preprocess`, `encode` and `select` and the language model's `forward` (the first forward of a
    `generate` is the prefill, the others decode). `calls[name]` lists each call's milliseconds, in call order.

    Each call also sleeps `pause_s`, so a stage counted twice, or counted in a neighbour, moves a clear amount of
    time. The model and its outputs are untouched."""

    def __init__(self, monkeypatch, engine, pause_s: float = 0.005) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.pause_s = pause_s
        adapter = engine.adapter
        for name in ("preprocess", "encode", "select"):
            monkeypatch.setattr(adapter, name, self._clocked(name, getattr(adapter, name)))
        monkeypatch.setattr(adapter.model, "forward", self._clocked("forward", adapter.model.forward))

    def _clocked(self, name, call):
        @wraps(call)
        def clocked(*args, **kwargs):
            start = time.perf_counter()
            try:
                time.sleep(self.pause_s)
                return call(*args, **kwargs)
            finally:
                self.calls[name].append((time.perf_counter() - start) * 1e3)

        return clocked


ROUNDING_MS = 2e-3
"""`timings_ms` are rounded to the microsecond."""
