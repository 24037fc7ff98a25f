"""One model copy serving requests: the engine (loaded in the background, so /health can say "loading"), its
batcher, the bounded queue, the media policy and the metrics. `app.py` routes HTTP requests to it; `run_local`
serves it with uvicorn, and Ray Serve makes one per replica (`ray_serve.py`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..batch import LOAD_THREADS, failure_message
from ..errors import MmtokError, RefusedSource
from .metrics import ServeMetrics
from .options import ServeOptions
from .protocol import ApiError, ChatRequest, Outcome, parse_chat
from .safety import MediaPolicy

RETRY_AFTER_S = 1


class Server:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.model_name = options.name
        self.metrics = ServeMetrics()
        self.policy = MediaPolicy(allow_private=options.allow_private_urls,
                                  local_root=options.allowed_local_media_path, timeout=options.download_timeout)
        # Images are downloaded and decoded here, off the event loop and off the model's thread.
        self.loader = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="mmtok-image")
        self.engine: Any = None
        self.batcher: Any = None
        self.error: BaseException | None = None
        self.created = int(time.time())
        self._waiting = 0
        self._lock = threading.Lock()

    # -- the model -----------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model and start batching (seconds to minutes; `ready` says when it is done)."""
        from ..engine import Engine
        from .batcher import Batcher

        o = self.options
        try:
            if o.arch is not None:
                from ..profile import load_arch

                engine = load_arch(o.arch, device=o.device, dtype=o.dtype)
                engine.set_cache(o.cache_mb)
            else:
                engine = Engine(o.model, device=o.device, dtype=o.dtype, agent_model=o.agent_model,
                                cache_mb=o.cache_mb, pan_and_scan=o.pan_and_scan)
            self.batcher = Batcher(engine, max_batch_size=o.max_batch_size, batch_wait_ms=o.batch_wait_ms,
                                   metrics=self.metrics, taken=self.release, debug=o.debug).start()
            self.engine = engine
        except BaseException as exc:
            self.error = exc
            raise

    def load_in_background(self, failed: Any = None) -> threading.Thread:
        """`load` in a thread; `failed()` is called if it raises."""

        def work() -> None:
            try:
                self.load()
            except BaseException:
                if failed is not None:
                    failed()

        thread = threading.Thread(target=work, name="mmtok-load", daemon=True)
        thread.start()
        return thread

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self.loader.shutdown(wait=False, cancel_futures=True)

    # -- a request's way through ---------------------------------------------------------------------------------

    def parse(self, body: Any) -> ChatRequest:
        if not self.ready:
            raise ApiError(503, "the model is still loading; retry shortly", code="loading",
                           headers={"Retry-After": str(RETRY_AFTER_S * 5)})
        has_template = bool(getattr(self.engine.adapter.processor, "chat_template", None))
        return parse_chat(body, self.options, model_name=self.model_name, has_template=has_template)

    def admit(self, request: ChatRequest) -> Any:
        """A Job for the request, counted in the queue; 503 with Retry-After when the queue is full."""
        from .batcher import Job

        with self._lock:
            if self._waiting >= self.options.max_queue:
                raise ApiError(503, f"the server's queue is full ({self.options.max_queue} requests waiting, "
                               "--max-queue); retry shortly", code="queue_full",
                               headers={"Retry-After": str(RETRY_AFTER_S)})
            self._waiting += 1
            self.metrics.queue.set(self._waiting)
        return Job(request=request, loop=asyncio.get_running_loop())

    def release(self, job: Any) -> None:
        """The job has left the queue (taken into a pass, failed or abandoned); once per job."""
        with self._lock:
            if job.released:
                return
            job.released = True
            self._waiting -= 1
            self.metrics.queue.set(self._waiting)

    def open_image(self, job: Any) -> None:
        """Load the job's image (in the loader pool): 400 for a source the policy refuses, 422 for one that cannot be
        fetched or decoded."""
        start = time.perf_counter()
        request = job.request
        try:
            job.image = self.policy.load(request.url)
        except RefusedSource as exc:
            raise ApiError(400, str(exc), param=request.url_param, code="image_refused") from None
        except MmtokError as exc:
            raise ApiError(422, str(exc), param=request.url_param, code="image_unavailable") from None
        finally:
            job.load_ms = (time.perf_counter() - start) * 1e3

    def finished(self, job: Any, status: str, outcome: Outcome | None = None) -> None:
        """Count a request's end: its status (or "disconnected"), and what its answer cost."""
        self.release(job)
        self.metrics.requests.labels(status).inc()
        now = time.perf_counter()
        if outcome is not None and status == "200":
            answer = outcome.answer
            self.metrics.vision_total.inc(answer.vision_total)
            self.metrics.vision_kept.inc(answer.vision_kept)
            self.metrics.prompt_tokens.inc(answer.prompt_pruned)
            self.metrics.latency.observe(now - job.arrived)
            if job.first_token_at is not None:
                self.metrics.ttft.observe(job.first_token_at - job.arrived)


def error_of(exc: BaseException) -> ApiError:
    """The API error for a request that failed in its pass: MmtokError is the request's (400), anything else ours."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, MmtokError):
        return ApiError(400, str(exc), code="cannot_answer")
    return ApiError(500, failure_message(exc), code="server_error")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line error (port taken, address not on this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise MmtokError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run_local(options: ServeOptions, announce: Any = None) -> None:
    """Serve on `options.host:port` with uvicorn until Ctrl-C or SIGTERM; the model loads while it listens.
    `announce(url)` hears where it listens once the socket is bound."""
    import uvicorn

    from .app import build_app

    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    server = Server(options)
    app = build_app(server)
    config = uvicorn.Config(app, log_level="info" if options.debug else "warning", access_log=options.debug,
                            timeout_graceful_shutdown=5, lifespan="off")
    http = uvicorn.Server(config)

    def failed() -> None:
        http.should_exit = True

    server.load_in_background(failed)
    if announce is not None:
        announce(f"http://{host if ':' not in host else f'[{host}]'}:{port}")
    try:
        http.run(sockets=[sock])
    finally:
        server.stop()
        sock.close()
    if server.error is not None:
        raise server.error
