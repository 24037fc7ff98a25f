"""Dynamic batching: requests whose images are loaded wait here; one gathering thread groups them into forward
passes and preprocesses the next pass while the model runs the current one, on the model's thread, with
`mmtok batch`'s recovery (`batch.PassRunner`: out-of-memory halving, a failing request failing alone).

A pass takes up to `--max-batch-size` requests that can share it (the same `RunOptions` and decoding; a seeded
sampled request runs alone, so that its seed always gives the same answer), waiting at most `--batch-wait-ms`
after the oldest. Each row's answer is watched as it is generated (`_Rows`, one flag per row for `generate`):
streamed to its client, cut at its stop strings and its max_tokens, and dropped at the next step when the client
has left; a request whose client left before its pass is never run.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from transformers.generation.stopping_criteria import StoppingCriteria

from ..batch import PassRunner
from ..engine import Engine, Sampling
from ..models.base import Prepared
from .protocol import ChatRequest, Outcome

if TYPE_CHECKING:
    from collections.abc import Callable

    from .metrics import ServeMetrics


@dataclass
class Job:
    """One request in flight: what it asks, and the way back to the event loop that waits for it."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    """("delta", text), then ("done", Outcome) or ("error", exception), put from the model's thread."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """The client left: never run it, or drop its row at the next step."""
    image: Image.Image | None = None
    load_ms: float = 0.0
    ready_at: float = 0.0
    """When its image was loaded and it joined the batcher's queue."""
    first_token_at: float | None = None
    sent: str = ""
    """The answer's text streamed so far (kept across a pass's out-of-memory retries)."""
    released: bool = False
    """It has left the server's queue (taken into a pass, or gone)."""

    @property
    def item(self) -> Any:
        return self.request.item

    def send(self, kind: str, payload: Any = None) -> None:
        """Hand an event to the request's coroutine (safe from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass


class RowText:
    """One row's answer while it is generated: cut at end-of-sequence, at the request's stop strings and at its
    max_tokens; with `stream`, each new piece of text goes to the client as soon as it cannot change any more."""

    def __init__(self, job: Job, tokenizer: Any, eos: set[int], limit: int) -> None:
        self.job, self.tokenizer, self.eos, self.limit = job, tokenizer, eos, limit
        self.stops = job.request.stop
        self.ids: list[int] = []
        self.count = 0
        """Tokens generated for this row (end-of-sequence included), what `usage.completion_tokens` counts."""
        self.text = ""
        self.reason: str | None = None

    @property
    def done(self) -> bool:
        return self.reason is not None

    def feed(self, token: int) -> bool:
        """Take the row's next token; True once the row needs no more."""
        if self.done:
            return True
        if self.job.cancelled.is_set():
            self.reason = "disconnected"
            return True
        if self.job.first_token_at is None:
            self.job.first_token_at = time.perf_counter()
        self.count += 1
        if token in self.eos:
            self.reason = "stop"
        else:
            self.ids.append(token)
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            at = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
            if at >= 0:
                self.text, self.reason = self.text[:at], "stop"
            elif self.count >= self.limit:
                self.reason = "length"
        if self.job.request.stream:
            self._emit()
        return self.done

    def finish(self) -> str:
        """The answer's final text (`Engine`'s rule: stripped); a row still open at the end ran out of tokens."""
        self.reason = self.reason or "length"
        return self.text.strip()

    def _emit(self) -> None:
        visible = self.text.lstrip()
        if not self.done:
            # Held back: half a character, whitespace (the next token may clean it up, as " ." -> ".") and
            # whatever could be the start of a stop string.
            visible = visible.rstrip("\ufffd").rstrip()
            visible = visible[: len(visible) - max((n for s in self.stops for n in range(len(s) - 1, 0, -1)
                                                   if visible.endswith(s[:n])), default=0)].rstrip()
        else:
            visible = visible.rstrip()
        job = self.job
        if len(visible) > len(job.sent) and visible.startswith(job.sent):
            job.send("delta", visible[len(job.sent):])
            job.sent = visible


class _Rows(StoppingCriteria):
    """`generate`'s per-row stop flags, from each row's `RowText`."""

    def __init__(self, rows: list[RowText]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        latest = input_ids[:, -1].tolist()
        return torch.tensor([row.feed(tok) for row, tok in zip(self.rows, latest, strict=True)],
                            dtype=torch.bool, device=input_ids.device)


@dataclass
class _Pass:
    jobs: list[Job]
    prepared: Prepared | None
    preprocess_ms: float


class Batcher(PassRunner[Job]):
    """The queue of loaded requests, the thread that gathers them into passes and the model's thread."""

    def __init__(self, engine: Engine, *, max_batch_size: int, batch_wait_ms: float, metrics: ServeMetrics,
                 taken: Callable[[Job], None], debug: bool = False) -> None:
        self.engine = engine
        self.batch_size = max_batch_size
        self.wait_s = batch_wait_ms / 1e3
        self.metrics = metrics
        self.taken = taken
        """Called with each request that leaves the queue for a pass (or is dropped there)."""
        self.debug = debug
        config = engine.adapter.model.generation_config
        self.config = config
        eos = config.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        self._cond = threading.Condition()
        self._pending: list[Job] = []
        self._next: _Pass | None = None
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def start(self) -> Batcher:
        for target, name in ((self._gather, "mmtok-gather"), (self._model, "mmtok-model")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def submit(self, job: Job) -> None:
        """Queue a request whose image is loaded."""
        job.ready_at = time.perf_counter()
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()

    def key(self, job: Job) -> tuple[Any, ...]:
        """Requests with equal keys can share a pass."""
        sampling = job.request.sampling.resolved(self.config)
        alone = sampling.temperature != 0 and sampling.seed is not None
        return job.request.run, sampling, id(job) if alone else None

    # -- the gathering thread ------------------------------------------------------------------------------------

    def _gather(self) -> None:
        adapter = self.engine.preprocessor()  # its own processor copy: tokenizers are not shared across threads
        while True:
            with self._cond:
                # One pass waits ready at most: requests arriving while the model is busy join the pass after it.
                while not self._stopped and (self._next is not None or not self._pending):
                    self._cond.wait()
                if self._stopped:
                    return
                jobs = self._choose()
            if not jobs:
                continue
            for job in jobs:
                self.taken(job)
            prepared, preprocess_ms = None, 0.0
            start = time.perf_counter()
            try:
                prepared = self.engine.prepare([j.image for j in jobs], [j.item.question for j in jobs],
                                               adapter=adapter, conversations=[j.request.conversation for j in jobs])
                preprocess_ms = (time.perf_counter() - start) * 1e3
            except Exception:  # the model's thread retries each request alone, so one bad one fails alone
                prepared = None
            with self._cond:
                self._next = _Pass(jobs, prepared, preprocess_ms)
                self._cond.notify_all()

    def _choose(self) -> list[Job]:
        """The next pass's requests (called holding the lock): the oldest request's kind, waiting until the pass is
        full or `wait_s` after the oldest arrived."""
        while True:
            for job in [j for j in self._pending if j.cancelled.is_set()]:
                self._pending.remove(job)
                self.taken(job)
            if not self._pending:
                return []
            first = self._pending[0]
            key = self.key(first)
            same = [j for j in self._pending if self.key(j) == key]
            left = first.ready_at + self.wait_s - time.perf_counter()
            if len(same) >= self.batch_size or left <= 0 or self._stopped:
                chosen = same[: self.batch_size]
                for job in chosen:
                    self._pending.remove(job)
                return chosen
            self._cond.wait(left)

    # -- the model's thread --------------------------------------------------------------------------------------

    def _model(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and self._next is None:
                    self._cond.wait()
                if self._stopped:
                    return
                work, self._next = self._next, None
                self._cond.notify_all()
            started = time.perf_counter()
            jobs = [j for j in work.jobs if not j.cancelled.is_set()]  # left while the pass was being prepared
            try:
                prepared = work.prepared if len(jobs) == len(work.jobs) else None
                outcomes = self.run_pass(jobs, prepared, work.preprocess_ms) if jobs else []
            except BaseException as exc:  # with --debug, or a bug: every request of the pass hears of it
                outcomes = [exc] * len(jobs)
            for job, outcome in zip(jobs, outcomes):
                if isinstance(outcome, Outcome):
                    outcome.timings_ms = {"load": job.load_ms, "queue": (started - job.ready_at) * 1e3}
                    job.send("done", outcome)
                else:
                    job.send("error", outcome)

    def prepare_entries(self, entries: list[Job]) -> Prepared:
        return self.engine.prepare([j.image for j in entries], [j.item.question for j in entries],
                                   conversations=[j.request.conversation for j in entries])

    def answer_entries(self, entries: list[Job], prepared: Prepared, preprocess_ms: float) -> list[Outcome]:
        """One forward pass: every row watched by its `RowText`."""
        tokenizer = self.engine.adapter.tokenizer
        rows = [RowText(job, tokenizer, self.eos, job.item.max_new_tokens) for job in entries]
        run, sampling, _ = self.key(entries[0])
        sampling: Sampling
        answers = self.engine.run_prepared(
            prepared, [j.item.question for j in entries], tokens=[j.item.tokens for j in entries],
            max_new_tokens=[j.item.max_new_tokens for j in entries], preprocess_ms=preprocess_ms, sampling=sampling,
            stopping_criteria=_Rows(rows), **run.kwargs(),
        )
        self.metrics.batch_size.observe(len(entries))
        self.metrics.completion_tokens.inc(sum(row.count for row in rows))  # a row dropped early counts what it cost
        crops = self.engine.pan_and_scan
        engine_fields = {} if crops is None else {"pan_and_scan": crops}
        return [Outcome(answer=answer, text=row.finish(), finish_reason=row.reason, completion_tokens=row.count,
                        batch_size=len(entries), engine_fields=engine_fields) for answer, row in zip(answers, rows)]
