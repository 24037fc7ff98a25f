"""`mmtok serve --ray`: the same app on Ray Serve, one `Server` (model copy, batcher, queue, metrics) per replica.

Ray Serve's proxy spreads requests over the replicas and each replica batches its own, exactly as one local
server does; there is no second batcher or balancer here. `/metrics` is the metrics of the replica that answered
(Ray exports its own cluster-wide ones).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from ..errors import MmtokError, UsageError
from ..ray_batch import root_cause
from .options import ServeOptions

INSTALL_HINT = "--ray needs Ray Serve: pip install 'mmtok-cli[serve,ray]' (or pip install 'ray[serve]')"
APP_NAME = "mmtok"

os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # stderr is for mmtok's own lines
try:
    import ray
    from ray import serve
except ImportError:  # the CLI says how to install it
    ray = serve = None


def replica_app(options: dict[str, Any]) -> Callable[[], Any]:
    """What each Ray Serve replica runs when it starts (Ray Serve's ASGI builder): its own `Server`, its model
    loaded, behind `app.build_app`."""

    def build() -> Any:
        from ..quiet import quiet_libraries
        from .app import build_app
        from .server import Server

        quiet_libraries()
        server = Server(ServeOptions(**options))
        server.load()
        return build_app(server)

    return build


def run_on_ray(options: ServeOptions, *, replicas: int, gpus_per_replica: float, address: str | None,
               announce: Callable[[str], None], say: Callable[[str], None]) -> None:
    """Deploy `replicas` copies on Ray Serve at `options.host:port` and serve until Ctrl-C or SIGTERM."""
    if serve is None:
        raise UsageError(INSTALL_HINT)
    if options.port == 0:
        raise UsageError("--port 0 does not work with --ray (Ray Serve's proxy needs a fixed port)")
    started = not ray.is_initialized()
    if started:
        local = {}
        if address is None:  # logical CPU slots: every replica, plus Serve's controller and proxy, must be placed
            local = {"num_cpus": max(os.cpu_count() or 1, math.ceil(replicas) + 1)}
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                     configure_logging=True, **local)
        except Exception as exc:
            raise MmtokError(f"could not start or reach Ray at {address or 'a local instance'}: "
                             f"{root_cause(exc)}") from None
    # A replica holds its queue plus the pass it runs and the next one; Ray Serve keeps the rest at the proxy.
    ongoing = options.max_queue + 2 * options.max_batch_size
    deployment = serve.deployment(
        serve.ingress(replica_app(dataclasses.asdict(options)))(), name="mmtok", num_replicas=replicas,
        max_ongoing_requests=ongoing, ray_actor_options={"num_cpus": 1, "num_gpus": gpus_per_replica}, health_check_period_s=10,
        graceful_shutdown_timeout_s=5,
    )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    stopped = []

    def interrupt(signum: int, frame: Any) -> None:
        stopped.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        serve.start(http_options={"host": options.host, "port": options.port},
                    logging_config={"log_level": "ERROR", "enable_access_log": options.debug})
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
        announce(f"http://{options.host}:{options.port}")
        running = _running_replicas()
        say(f"mmtok serve: {running} Ray Serve replica{'s' if running != 1 else ''} ready")
        while True:
            time.sleep(1)
    except Exception as exc:
        raise MmtokError(f"Ray Serve failed: {root_cause(exc)}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if started:  # our own Ray instance: everything in it goes
            ray.shutdown()
        else:  # someone's cluster: only our application goes; Serve and its other applications stay
            serve.delete(APP_NAME)
        if stopped:  # SIGTERM: die of it, as the shell expects (exit 143), once everything is stopped
            signal.raise_signal(signal.SIGTERM)


def _running_replicas() -> int:
    status = serve.status().applications[APP_NAME]
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())

