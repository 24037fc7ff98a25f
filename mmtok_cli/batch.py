"""Many items through one loaded model: load in the background, batch, answer, write in order.

A background thread decodes (or downloads) images with a small thread pool and runs the processor,
so the model never waits on disk, network or PIL when the loader keeps up. The main thread runs the
model on one chunk at a time and writes the chunk's records (in input order, errors included) before
taking the next, so an interruption loses at most the chunk in flight.

The decoded originals in flight are bounded in bytes (`ByteBudget`, LOADER_MB), not in batches: once a chunk is
preprocessed its originals are let go unless something still needs their pixels (`--show-dir`'s pictures, the
agent's second model); `random`'s seeds and the cache's keys are taken from them while preprocessing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from .engine import Engine
from .errors import MmtokError, first_line
from .io import URL_TIMEOUT_S, InputPlan, Item, WriteError, answer_fields, image_bytes, open_visuals, record
from .models.base import Prepared
from .video import FrameSampling, is_video

if TYPE_CHECKING:
    from rich.console import Console

LOAD_THREADS = 4
"""Images decoded or downloaded at once: enough to hide network latency without hogging cores."""
QUEUE_CHUNKS = 2
"""Chunks the loader may prepare ahead of the model."""
STALL_S = 0.25
"""When input stops arriving for this long, a partial chunk goes to the model instead of waiting."""
STOP_S = 10.0
"""How long a run that stops early waits for the loader to put down its work."""
LOADER_MB = 512
"""Decoded images the loader may hold at once, in MB: decoding (with its copies), waiting for their chunk, and kept
after preprocessing where something needs them. A 4096 x 4096 image holds 64 MB, a 640 x 480 photo 1.2 MB; where
the images of a chunk would not fit, the chunk goes to the model smaller (answers do not depend on batching)."""


def _held_bytes(entry: Any) -> int:
    """What a decoded original costs until its chunk is preprocessed: itself, and the RGB array the processor makes
    of it (transformers' image processors turn every image of a batch into one before resizing any); a video's
    frames and their copy; an item of several inputs, each of them."""
    if isinstance(entry, (list, tuple)):
        return sum(_held_bytes(v) for v in entry)
    if is_video(entry):
        return 2 * entry.frames.nbytes
    return image_bytes(*entry.size) + 3 * entry.width * entry.height


class ByteBudget:
    """The loader's memory bound. An image takes its bytes before it decodes (`io.Reserve`) and gives them back
    when its original is let go. The item the loader waits for always goes ahead, over the bound by one image at
    most, so the loader never waits for an image that waits for it; the others wait their turn."""

    def __init__(self, limit: int, stop: threading.Event) -> None:
        self.limit, self.used, self.next = limit, 0, 0
        self._stop = stop
        self._changed = threading.Condition()

    def take(self, number: int, size: int) -> None:
        """Hold `size` bytes for the input's item `number`, once they fit or the loader needs that item."""
        with self._changed:
            while self.used + size > self.limit and number > self.next and not self._stop.is_set():
                self._changed.wait(0.2)
            self.used += size

    def give(self, size: int) -> None:
        with self._changed:
            self.used -= size
            self._changed.notify_all()

    def needs(self, number: int) -> None:
        """The loader waits for item `number` now: it may go ahead whatever it costs."""
        with self._changed:
            self.next = number
            self._changed.notify_all()

    @property
    def full(self) -> bool:
        return self.used >= self.limit


@dataclass
class BatchOptions:
    tokens: int = 64
    method: str = "mmtok"
    max_new_tokens: int = 64
    batch_size: int = 8
    compare: bool = False
    debug: bool = False
    """Let unexpected exceptions propagate instead of turning them into error records."""
    show_dir: Path | None = None
    """Write one picture per answered item here (`mmtok show`'s drawing), named by the item's id."""
    agent: bool = False
    """A cheap first pass per batch; its preliminary answers join the questions' words in T (`Engine.run_prepared`)."""
    agent_tokens: int | None = None
    """The first pass's budget (None: the item's budget; all tokens when the engine has an `agent_engine`)."""
    selection: dict[str, float | str] = field(default_factory=dict)
    """alpha / tau_t / tau_v / budget / question_words the user set (`options.selection_params`); the others keep
    their defaults."""
    download_timeout: float = URL_TIMEOUT_S
    """Deadline for one image download, whole: a slow or endless one fails its item alone."""
    frame_sampling: FrameSampling = field(default_factory=FrameSampling)
    """Which frames of each video to decode (--frames / --fps / --max-frames; else the family's own rule)."""
    post_prompt: str | None = None
    """An instruction appended to every question (`Engine.prepare`); records name it."""


@dataclass
class Summary:
    items: int = 0
    ok: int = 0
    failed: int = 0
    kept: int = 0
    total: int = 0
    wall_s: float = 0.0
    wait_s: float = 0.0
    """Time the model side spent waiting for the loader (images + preprocessing)."""
    batch_size: int = 0
    """The batch size in use at the end (smaller than asked after out-of-memory halving)."""
    agent_ms: float = 0.0
    """The agent's first passes, summed over the answered items' shares."""
    model_ms: float = 0.0
    """Everything the model side spent on the answered items (their timings' totals, agent included)."""
    cached: int = 0
    """Answered items whose image was not encoded for them (the engine's cache, or a batch mate showing it)."""

    def count(self, rec: dict[str, Any]) -> None:
        """Add one output record to the tallies."""
        self.items += 1
        if rec["error"] is None:
            self.ok += 1
            self.kept += rec["vision_tokens"]["kept"]
            self.total += rec["vision_tokens"]["total"]
            self.agent_ms += rec["timings_ms"].get("agent", 0.0)
            self.model_ms += rec["timings_ms"].get("total", 0.0)
            self.cached += bool(rec["vision_tokens"].get("cached"))
        else:
            self.failed += 1

    def add(self, other: Summary) -> None:
        """Fold in another run's tallies (several runs as one: `mmtok eval`'s blocks)."""
        for f in fields(self):  # every tally adds up; the batch size in use is the smaller one
            if f.name != "batch_size":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.batch_size = min(self.batch_size, other.batch_size) if self.batch_size else other.batch_size

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items, "ok": self.ok, "failed": self.failed,
            "mean_vision_tokens_kept": round(self.kept / self.ok, 2) if self.ok else None,
            "mean_vision_tokens_total": round(self.total / self.ok, 2) if self.ok else None,
            "vision_cached": self.cached,
            "items_per_s": round(self.items_per_s, 3), "wall_s": round(self.wall_s, 3),
            "waiting_on_loader_share": round(self.wait_s / self.wall_s, 4) if self.wall_s else 0.0,
            "batch_size": self.batch_size,
            "mean_agent_ms": round(self.agent_ms / self.ok, 3) if self.ok and self.agent_ms else None,
            "agent_share": round(self.agent_ms / self.model_ms, 4) if self.model_ms and self.agent_ms else None,
        }


@dataclass
class _Entry:
    item: Item
    image: Any = None
    """What the item asks about, opened: an image, a video, or a list of them."""
    load_ms: float = 0.0
    held: int = 0
    """Bytes of the run's `ByteBudget` this entry's original holds."""


@dataclass
class _Chunk:
    entries: list[_Entry]
    prepared: Prepared | None = None
    preprocess_ms: float = 0.0
    ready: list[_Entry] = field(default_factory=list)
    """Entries with an image, in order; `prepared` holds exactly these."""


_END = object()

E = TypeVar("E")


class PassRunner(Generic[E]):
    """Forward passes over entries of type E on one engine, with the recovery every front end needs (`batch`,
    `serve`): on CUDA out-of-memory the pass is halved, and later passes stay at the smaller `batch_size`; when a
    pass fails otherwise, each entry runs alone, so a bad one fails alone. Subclasses say how entries are prepared
    and answered."""

    engine: Engine
    batch_size: int
    debug: bool = False
    """Let unexpected exceptions propagate instead of failing the entry."""

    def prepare_entries(self, entries: list[E]) -> Prepared:
        """The processor's inputs for `entries` (on the model's thread: after a split, or a failed pass)."""
        raise NotImplementedError

    def answer_entries(self, entries: list[E], prepared: Prepared, preprocess_ms: float) -> list[Any]:
        """One result per entry, from one forward pass."""
        raise NotImplementedError

    def run_pass(self, entries: list[E], prepared: Prepared | None, preprocess_ms: float) -> list[Any]:
        """Results of `answer_entries`, or for an entry that has none, the exception that says why (MmtokError for
        what can be explained in a line)."""
        if len(entries) > self.batch_size:  # the batch size was lowered after an out-of-memory
            mid = self.batch_size
            return self.run_pass(entries[:mid], None, 0.0) + self.run_pass(entries[mid:], None, 0.0)
        try:
            if prepared is None:
                start = time.perf_counter()
                prepared = self.prepare_entries(entries)
                preprocess_ms = (time.perf_counter() - start) * 1e3
            return self.answer_entries(entries, prepared, preprocess_ms)
        except torch.cuda.OutOfMemoryError:
            if self.engine.cache is not None:  # cached vision tokens yield to the batch (they may be on the GPU)
                self.engine.cache.shrink()
            if self.engine.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(entries) == 1:
                return [MmtokError("out of memory even at batch size 1 (try fewer --tokens, a smaller model or "
                                   "--dtype bfloat16)")]
            self.batch_size = max(1, len(entries) // 2)
            return self.run_pass(entries, None, 0.0)
        except WriteError:
            raise  # an output cannot be written (--show-dir on a full disk): the run stops, the entry is not at fault
        except Exception as exc:
            if self.debug:
                raise
            if len(entries) > 1:  # find the entry that fails; the others still get answers
                return [o for e in entries for o in self.run_pass([e], None, 0.0)]
            return [exc]


def failure_message(exc: BaseException) -> str:
    """What an entry's record says about the exception that failed it."""
    if isinstance(exc, MmtokError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {first_line(exc)}"


class BatchRunner(PassRunner[_Entry]):
    """Runs items through an `Engine` and hands each chunk's records to `emit`, in input order."""

    def __init__(self, engine: Engine, options: BatchOptions, *, base: Path | None = None) -> None:
        self.engine = engine
        self.options = options
        self.base = base
        self.batch_size = options.batch_size
        self.debug = options.debug
        self.sampling, self.frame_rule = engine.video_sampling(options.frame_sampling)
        self.loader_bytes = LOADER_MB * 2**20
        self.keep_images = options.show_dir is not None or engine.agent_engine is not None
        """Originals outlive preprocessing only for what reads their pixels later: pictures, the agent's model."""
        self.seeds = options.method == "random"

    def run(
        self,
        items: Iterable[Item],
        emit: Callable[[list[dict[str, Any]]], None],
        progress: Callable[[int, Summary], None] | None = None,
        *,
        reuse: list[_Chunk] | None = None,
    ) -> Summary:
        """Answer `items`, handing each chunk's records to `emit` in input order.

        `reuse`: the chunks of an earlier run over the same items, already preprocessed: they are answered again
        without loading or preprocessing anything (`mmtok eval`'s method x budget rows). An empty list is filled
        with this run's chunks (with `random`'s seeds, whatever the method, for the runs that replay them)."""
        summary = Summary(batch_size=self.batch_size)
        start = time.perf_counter()
        if reuse:
            for chunk in reuse:
                self._answered(self._answer_chunk(chunk, summary, preprocess_ms=0.0), summary, start, emit, progress)
            summary.wall_s = time.perf_counter() - start
            return summary
        if reuse is not None:
            self.seeds = True
        chunks: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        stop = threading.Event()  # one per run: a runner answers many runs (a Ray actor, one per block)
        budget = ByteBudget(self.loader_bytes, stop)
        loader = threading.Thread(target=self._load, args=(iter(items), chunks, stop, budget), name="mmtok-loader",
                                  daemon=True)
        loader.start()
        try:
            while True:
                waited = time.perf_counter()
                chunk = chunks.get()
                summary.wait_s += time.perf_counter() - waited
                if chunk is _END:
                    break
                if isinstance(chunk, BaseException):
                    raise chunk
                try:
                    records = self._answer_chunk(chunk, summary, preprocess_ms=chunk.preprocess_ms)
                finally:
                    for entry in chunk.entries:  # what was kept for answering is let go now
                        budget.give(entry.held)
                        entry.held = 0
                if reuse is not None:
                    reuse.append(chunk)
                self._answered(records, summary, start, emit, progress)
        finally:
            stop.set()
            # A run that stops early (a failed write, Ctrl-C) lets the loader finish its step first: a thread still
            # inside torch while the interpreter exits can abort the process.
            loader.join(timeout=STOP_S)
            summary.wall_s = time.perf_counter() - start
        return summary

    def _answered(self, records: list[dict[str, Any]], summary: Summary, start: float,
                  emit: Callable[[list[dict[str, Any]]], None], progress: Callable[[int, Summary], None] | None) -> None:
        emit(records)
        summary.wall_s = time.perf_counter() - start
        summary.batch_size = self.batch_size
        if progress:
            progress(len(records), summary)

    # -- background side -------------------------------------------------------------------------

    def _load(self, items: Iterator[Item], out: queue.Queue, stop: threading.Event, budget: ByteBudget) -> None:
        """Assemble chunks of `batch_size` loaded images (fewer where their bytes fill `budget`) and preprocess
        them; runs in a thread."""
        try:
            adapter = self.engine.preprocessor()
            with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="mmtok-image") as pool:
                inbox: queue.Queue = queue.Queue(maxsize=2 * max(self.batch_size, LOAD_THREADS))
                reader = threading.Thread(target=self._read, args=(items, pool, inbox, stop, budget), daemon=True)
                reader.start()
                chunk: list[_Entry] = []
                ok = 0
                while not stop.is_set():
                    try:
                        # Input that stalls (a slow producer on stdin) must not hold back answers.
                        got = inbox.get(timeout=STALL_S if chunk else 0.2)
                    except queue.Empty:
                        if chunk:
                            self._put(out, self._prepare(chunk, adapter, budget), stop)
                            chunk, ok = [], 0
                        continue
                    if got is _END:
                        break
                    if isinstance(got, BaseException):
                        raise got
                    item, future, number = got
                    entry = _Entry(item)
                    if future is not None:
                        budget.needs(number)
                        entry.image, entry.held, entry.load_ms, item.error = future.result()
                        ok += entry.image is not None
                    chunk.append(entry)
                    if ok >= self.batch_size or ok and budget.full:
                        self._put(out, self._prepare(chunk, adapter, budget), stop)
                        chunk, ok = [], 0
                if chunk and not stop.is_set():
                    self._put(out, self._prepare(chunk, adapter, budget), stop)
                pool.shutdown(wait=False, cancel_futures=True)
            self._put(out, _END, stop)
        except BaseException as exc:  # hand it to the main thread, which reports it
            self._put(out, exc, stop)

    def _read(
        self, items: Iterator[Item], pool: ThreadPoolExecutor, inbox: queue.Queue, stop: threading.Event,
        budget: ByteBudget,
    ) -> None:
        """Read input and start loading each image; the bounded inbox limits how far ahead this runs."""
        try:
            for number, item in enumerate(items):
                if stop.is_set():
                    return
                future = pool.submit(self._open, item, number, budget) if item.error is None else None
                self._put(inbox, (item, future, number), stop)
            self._put(inbox, _END, stop)
        except BaseException as exc:
            self._put(inbox, exc, stop)

    @staticmethod
    def _put(out: queue.Queue, value: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                out.put(value, timeout=0.2)
                return
            except queue.Full:
                continue

    def _open(
        self, item: Item, number: int = 0, budget: ByteBudget | None = None
    ) -> tuple[Any, int, float, str | None]:
        """(what the item asks about, bytes it holds in `budget`, ms, error) for one item; decoding an image waits
        for its bytes in `budget`."""
        if item.picture is not None:  # the caller's own picture: not ours to count or let go
            return item.picture, 0, 0.0, None
        held = 0

        def reserve(size: int) -> None:
            nonlocal held
            budget.take(number, size)
            held += size

        start = time.perf_counter()
        image = error = None
        kept = 0
        try:
            image = open_visuals(item.visual_sources(), self.base, sampling=self.sampling, rule=self.frame_rule,
                                 timeout=self.options.download_timeout, reserve=reserve if budget is not None else None)
        except MmtokError as exc:
            error = str(exc)
        finally:
            if budget is not None:
                kept = _held_bytes(image) if image is not None else 0
                budget.give(held - kept)  # decoding's copies are gone; the image itself stays counted
        return image, kept, (time.perf_counter() - start) * 1e3, error

    def _prepare(self, entries: list[_Entry], adapter: Any, budget: ByteBudget) -> _Chunk:
        chunk = _Chunk(entries, ready=[e for e in entries if e.image is not None])
        if not chunk.ready:
            return chunk
        start = time.perf_counter()
        try:
            chunk.prepared = self.engine.prepare(
                [e.image for e in chunk.ready], [e.item.question for e in chunk.ready], adapter=adapter,
                post_prompt=self.options.post_prompt, seeds=self.seeds,
            )
        except Exception:  # one bad image must not sink its neighbours: the main thread retries one by one
            chunk.prepared = None
        chunk.preprocess_ms = (time.perf_counter() - start) * 1e3
        if chunk.prepared is not None and not self.keep_images:
            chunk.prepared.drop_images()
            for entry in chunk.ready:
                entry.image = None
                budget.give(entry.held)
                entry.held = 0
        return chunk

    # -- model side ------------------------------------------------------------------------------

    def _answer_chunk(self, chunk: _Chunk, summary: Summary, *, preprocess_ms: float) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any] | str] = {}
        if chunk.ready:
            outcomes = self.run_pass(chunk.ready, chunk.prepared, preprocess_ms)
            results = {id(e): o for e, o in zip(chunk.ready, outcomes)}
        records = []
        for entry in chunk.entries:
            outcome = results.get(id(entry))
            if isinstance(outcome, dict):
                records.append(record(entry.item, outcome))
            else:
                error = failure_message(outcome) if outcome is not None else entry.item.error or "not processed"
                records.append(record(entry.item, None, error=error))
            summary.count(records[-1])
        return records

    def prepare_entries(self, entries: list[_Entry]) -> Prepared:
        return self.engine.prepare(self._images(entries), [e.item.question for e in entries],
                                   post_prompt=self.options.post_prompt, seeds=self.seeds)

    def _images(self, entries: list[_Entry]) -> list[Any]:
        """The entries' originals, opened again where they were let go (a batch that must be split or retried)."""
        for entry in entries:
            if entry.image is None:
                image, _, _, error = self._open(entry.item)
                if error is not None:
                    raise MmtokError(error)
                entry.image = image
        return [e.image for e in entries]

    def answer_entries(self, entries: list[_Entry], prepared: Prepared, preprocess_ms: float) -> list[dict[str, Any]]:
        opts = self.options
        questions = [e.item.question for e in entries]
        run = {
            "tokens": [e.item.tokens or opts.tokens for e in entries],
            "max_new_tokens": [e.item.max_new_tokens or opts.max_new_tokens for e in entries],
            "preprocess_ms": preprocess_ms,
            **opts.selection,
        }
        # The unpruned run of --compare below never takes the agent: it reads every token anyway.
        answers = self.engine.run_prepared(prepared, questions, method=opts.method, agent=opts.agent,
                                           agent_tokens=opts.agent_tokens, **run)
        if opts.show_dir is not None:
            from .show import save_batch_pictures

            items = [(e.item.id, e.image, e.item.question) for e in entries]
            save_batch_pictures(self.engine, opts.show_dir, prepared, items, answers, opts.method)
        full = None
        if opts.compare:
            full = answers if opts.method == "full" else self.engine.run_prepared(
                prepared, questions, method="full", **run
            )
        asked = {"post_prompt": opts.post_prompt} if opts.post_prompt else {}  # the question alone is not all it read
        if self.engine.pan_and_scan is not None:  # the family can crop long images: say whether it did
            asked["pan_and_scan"] = self.engine.pan_and_scan
        return [
            {**answer_fields(a, load_ms=e.load_ms, full=None if full is None else full[i]), **asked}
            for i, (e, a) in enumerate(zip(entries, answers))
        ]


class BatchProgress:
    """A Rich progress bar on a terminal; on a pipe or log file, a plain line every 30 s (on `console`, stderr)."""

    LOG_EVERY_S = 30.0

    def __init__(self, console: Console, total: int | None, skipped: int) -> None:
        self.console, self.total, self.skipped = console, total, skipped
        self.bar = None
        self.last_log = time.monotonic()

    def __enter__(self) -> BatchProgress:
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                SpinnerColumn(), TextColumn("answering"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("·"), TextColumn("{task.fields[failed]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("batch", total=self.total, completed=self.skipped, rate="", failed="")
        return self

    def update(self, n: int, summary: Summary) -> None:
        rate = f"{summary.items_per_s:.2f} items/s"
        if self.bar is not None:
            self.bar.update(self.task, advance=n, rate=rate, failed=f"{summary.failed} failed")
        elif time.monotonic() - self.last_log >= self.LOG_EVERY_S:
            self.last_log = time.monotonic()
            of = f"/{self.total}" if self.total is not None else ""
            self.console.print(f"mmtok batch: {self.skipped + summary.items}{of} items · {summary.failed} failed · {rate}",
                      highlight=False, markup=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


def print_summary(console: Console, summary: Summary, plan: InputPlan, out: str, asked_batch: int) -> None:
    """The end-of-run lines on `console` (stderr): notes, counts, speed, and what to look at."""
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    d = summary.as_dict()
    kept = (f"{d['mean_vision_tokens_kept']:g}/{d['mean_vision_tokens_total']:g} vision tokens kept on average · "
            if summary.ok else "")
    resumed = f" ({plan.skipped} already done)" if plan.skipped else ""
    console.print(
        f"{summary.items} items{resumed}: {summary.ok} ok, {summary.failed} failed · {kept}"
        f"{d['items_per_s']:.1f} items/s · {d['wall_s']:.1f} s"
        + (f" · the agent's first pass took {d['mean_agent_ms']:.1f} ms/item, {100 * d['agent_share']:.0f}% of the "
           "model's time" if d["mean_agent_ms"] else "")
        + (f" · {summary.cached} items reused an image's vision tokens" if summary.cached else "")
        + (f" · model waited on image loading {100 * d['waiting_on_loader_share']:.0f}% of the time"
           if summary.wait_s else ""),
        highlight=False, markup=False,
    )
    if summary.batch_size < asked_batch:
        console.print(f"out of GPU memory: the batch size was lowered to {summary.batch_size} (asked {asked_batch})",
                  highlight=False, markup=False, style="yellow")
    if summary.failed:
        where = "the records" if out == "-" else out
        console.print(f"items that failed have 'error' set in {where}", highlight=False, markup=False, style="yellow")
