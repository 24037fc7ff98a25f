"""Load a model once, then answer batches: preprocess -> encode -> select -> generate, timed.

Data flows one way: the engine asks the adapter for V/U/T, hands them to `selection.select`, asks
the adapter for the shortened generation inputs and calls transformers' own `generate`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .baselines import RANDOM_SEED
from .cache import VisionCache, default_mb, pixel_strips
from .errors import MmtokError, UsageError
from .flops import estimated_speedup
from .models import Adapter, load_adapter
from .models.base import Prepared, VisionTokens, as_visuals, input_counts, kept_by_input, merged_feed
from .options import (
    AGENT_MAX_NEW_TOKENS,
    AGENT_METHODS,
    DEFAULT_MODEL,
    DTYPES,
    check_agent,
    check_cache,
    check_conventions,
    check_options,
    check_post_prompt,
)
from .selection import ALPHA, TAU_V, Selection
from .text import with_post_prompt
from .video import FrameSampling, is_video

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Answer:
    """One item's result. Timings are the item's share of its batch, in milliseconds."""

    answer: str
    output_ids: list[int]
    vision_total: int
    vision_kept: int
    kept_indices: list[list[int]]
    """Per visual input of the item (one list for an item of one image), its kept tokens, counted within it."""
    kept_order: list[list[int]]
    """`kept_indices` in the order the selection picked them (first = picked first); index order for
    full, random and uniform, and wherever everything was kept. For an item of several inputs, one list over all
    its tokens (counted over the inputs one after another), as the selection picks over them together."""
    prompt_unpruned: int
    prompt_pruned: int
    speedup_estimated: float = 1.0
    """Language-model prefill FLOPs unpruned / pruned, from the config (an estimate, see flops.py)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    agent_answer: str | None = None
    """The agent's preliminary answer, whose words joined the question's in T; None without the agent."""
    conventions: dict[str, str] = field(default_factory=dict)
    """The conventions that applied to this item: `budget` for an image of several views, `question_words` for
    the methods that read the question."""
    vision_cached: bool = False
    """The image's vision tokens were not encoded for this item: the engine's cache had them, or an earlier item of
    the batch shows the same image (`timings_ms.vision` is then only the look-up)."""
    vision_inputs: list[dict[str, Any]] = field(default_factory=list)
    """Per visual input in prompt order: {"kind": "image" | "video", "total", "kept"} (a video's also "frames")."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown --device '{name}'; use auto, cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for, but this PyTorch has no Apple MPS backend; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in TORCH_DTYPES:
        raise UsageError(f"unknown --dtype '{name}'; use {', '.join(DTYPES)}")
    return TORCH_DTYPES[name]


@dataclass(frozen=True)
class Sampling:
    """How the answer's tokens are drawn (`mmtok serve`'s temperature / top_p / seed); without one, greedy.

    `temperature` 0 is greedy decoding, exactly what `ask` and `batch` do; None lets the checkpoint's generation
    config decide (whether to sample, and its temperature, top_p, top_k); above 0 samples at that temperature.
    `top_p` (None: the config's) is the nucleus; `seed` seeds PyTorch's generator just before the answer is drawn.
    """

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    def resolved(self, config: Any) -> Sampling:
        """The same decoding with the generation config read: greedy however it was asked is `Sampling(0.0)`
        (top_p and seed change nothing there), so requests that decode alike compare equal."""
        greedy = self.temperature == 0 or self.temperature is None and not getattr(config, "do_sample", False)
        return Sampling(0.0) if greedy else self

    def generate_kwargs(self) -> dict[str, Any]:
        """`generate` keywords for this decoding (what they leave out, the generation config says)."""
        if self.temperature == 0:
            return {"do_sample": False}
        given = {"temperature": self.temperature, "top_p": self.top_p}
        return {**({"do_sample": True} if self.temperature is not None else {}),
                **{k: v for k, v in given.items() if v is not None}}


class _Clock(BaseStreamer):
    """Timestamps generation: `generate` first streams the prompt, then each new token (on the host,
    so the GPU has finished the step by then)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token = 0.0

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token = time.perf_counter()

    def end(self) -> None:
        pass


class Engine:
    """A loaded model plus its family adapter; reusable across many batches."""

    def __init__(
        self, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto", random_weights: bool = False,
        agent_model: str | Engine | None = None, cache_mb: int | None = None, pan_and_scan: bool | None = None,
    ) -> None:
        """`random_weights=True`: build the checkpoint's architecture with random weights (see `load_adapter`).

        `cache_mb`: the bound of the vision-token cache in MB (cache.py; None: `cache.DEFAULT_MB` for the device;
        0: no cache, every item encodes its own image even where its batch shows it twice).

        `agent_model`: a second, smaller checkpoint (or a loaded `Engine`) that makes the agent's preliminary
        answers (`run_prepared(agent=True)`); without it, this model makes them.

        `pan_and_scan`: crop long images into extra views (Gemma 3's pan-and-scan; a `UsageError` for a family
        without it); None follows the checkpoint's image processor.
        """
        from .models.registry import check_pan_and_scan

        check_pan_and_scan(model, pan_and_scan)  # seconds, before the model loads for minutes
        if isinstance(agent_model, str):
            check_agent_model(agent_model)
        self.model_name = model
        self.random_weights = random_weights
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.adapter: Adapter = load_adapter(model, device=self.device, dtype=self.dtype, random_weights=random_weights)
        if pan_and_scan is not None and self.adapter.has_pan_and_scan:
            self.adapter.pan_and_scan = pan_and_scan
        self.cache: VisionCache | None = None
        self.set_cache(cache_mb)
        self.agent_engine: Engine | None = None
        """The agent's own model, when it is not this one."""
        if isinstance(agent_model, Engine):
            self.agent_engine = agent_model
        elif agent_model is not None:
            try:
                self.agent_engine = Engine(agent_model, device=device, dtype=dtype, random_weights=random_weights)
            except MmtokError as exc:
                raise _agent_model_error(exc) from exc

    @property
    def pan_and_scan(self) -> bool | None:
        """Whether long images are cropped into extra views (Gemma 3); None for a family without pan-and-scan."""
        return self.adapter.pan_and_scan_in_use()

    def set_cache(self, mb: int | None) -> None:
        """A new, empty vision-token cache of `mb` MB (None: the device's default; 0: none)."""
        check_cache(mb)
        mb = default_mb(self.device) if mb is None else mb
        self.cache = VisionCache(mb * 2**20) if mb else None

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def preprocessor(self) -> Adapter:
        """An adapter for a background thread: shares the model, owns a copy of the processor
        (fast tokenizers must not be used from two threads at once)."""
        return self.adapter.for_thread()

    def video_sampling(self, sampling: FrameSampling | None = None) -> tuple[FrameSampling, Any]:
        """`sampling` checked, and the family's own frame rule for the videos it leaves to the default (see
        `video.decode`)."""
        return (sampling or FrameSampling()).check(), self.adapter.frame_rule()

    def prepare(
        self, images: list[Any], questions: list[str], *, adapter: Adapter | None = None,
        post_prompt: str | None = None, conversations: Sequence[list[dict] | None] | None = None, seeds: bool = False,
    ) -> Prepared:
        """Processor inputs for a batch (CPU work; safe in a background thread with `preprocessor()`). Each entry of
        `images` is what one question asks about: an image, a video (`video.Video`), or a list of them in prompt
        order.

        `post_prompt`: a fixed instruction the model reads after every question, on a line of its own (e.g.
        "Answer the question using a single word or phrase."); `run_prepared` leaves it out of T (text.py).
        `conversations`: per question, None or the whole chat to template instead of one user turn (`Adapter.prompt`;
        the question is then its last user text, which the selection reads; a post_prompt belongs in the chat).
        The cache keys, and with `seeds` `random`'s seeds, are computed here too, so that the originals may be
        dropped afterwards (`Prepared.drop_images`).
        """
        if len(images) != len(questions) or not images:
            raise ValueError("need one question per item, and at least one item")
        check_post_prompt(post_prompt)
        adapter = adapter or self.adapter
        if post_prompt and conversations and any(c is not None for c in conversations):
            raise ValueError("a post_prompt goes with one-turn prompts; a conversation carries its own instructions")
        prepared = adapter.preprocess(images, [with_post_prompt(q, post_prompt) for q in questions], conversations)
        prepared.post_prompt = post_prompt
        if self.cache is not None:  # hashing here keeps it off the model's thread in `mmtok batch`
            prepared.keys = adapter.image_keys(images)
        if seeds:
            prepared.seeds = [image_seed(im) for im in images]
        return prepared

    def run(
        self, images: list[Any], questions: list[str], *, post_prompt: str | None = None,
        conversations: Sequence[list[dict] | None] | None = None, **options: Any,
    ) -> list[Answer]:
        """Answer one question per item (an image, a video, or a list of them) as a single batch: `prepare` (with
        `post_prompt` or `conversations`, see there), then `run_prepared` with `options` (tokens, method,
        max_new_tokens, alpha, tau_t, tau_v, budget, question_words, ignore_eos, agent, agent_tokens, sampling; see
        there)."""
        t0 = self._sync()
        prepared = self.prepare(images, questions, post_prompt=post_prompt, conversations=conversations)
        return self.run_prepared(prepared, questions, preprocess_ms=(self._sync() - t0) * 1e3, **options)

    @torch.inference_mode()
    def run_prepared(
        self,
        prepared: Prepared,
        questions: list[str],
        *,
        tokens: int | Sequence[int] = 64,
        method: str = "mmtok",
        max_new_tokens: int | Sequence[int] = 64,
        alpha: float = ALPHA,
        tau_t: float | None = None,
        tau_v: float = TAU_V,
        budget: str = "total",
        question_words: str = "content",
        preprocess_ms: float = 0.0,
        ignore_eos: bool = False,
        agent: bool = False,
        agent_tokens: int | None = None,
        agent_max_new_tokens: int = AGENT_MAX_NEW_TOKENS,
        sampling: Sampling | None = None,
        stopping_criteria: StoppingCriteria | None = None,
    ) -> list[Answer]:
        """Answer the questions of a batch made by `prepare` (the questions as given there, without its
        `post_prompt`).

        `tokens` and `max_new_tokens` are one value for all or one per image. `budget` ("total", "per-view",
        "global"): what `tokens` means for an image of several views (see models/views.py); `question_words`
        ("content", "all"): which of the question's words make T (see text.question_words). `ignore_eos=True`
        generates exactly `max_new_tokens` (the largest) for every image, for fixed-work timing.
        `preprocess_ms` is what `prepare` took, for the timings.

        `agent=True` (methods mmtok and text only) first answers the whole batch cheaply: this model at
        `agent_tokens` (default: `tokens`) on the vision tokens it has already encoded, or `agent_engine`
        (with all its vision tokens unless `agent_tokens` is given; it reads `prepared.images`), generating up to
        `agent_max_new_tokens`. Each preliminary answer's words join its question's words in T, then the
        tokens are selected again and the answer generated; the prompt never contains the preliminary
        answer. Its cost is `timings_ms["agent"]`, the answer `Answer.agent_answer`.

        `sampling` (None: greedy) draws the answers (the agent's first pass is always greedy); with a seed, a pass
        gives the same answers every time it has the same rows. `stopping_criteria` watches the answers' generation
        (one flag per row: a finished row stops counting for `generate`'s early stop; its later tokens are cut off
        by the caller, who knows why it stopped).
        """
        budgets = _per_item(tokens, len(questions), "token budget")
        limits = _per_item(max_new_tokens, len(questions), "max_new_tokens")
        check_options(tokens=min(budgets), method=method, max_new_tokens=min(limits))
        check_conventions(budget=budget, question_words=question_words)
        conventions = {"budget": budget, "question_words": question_words}
        if agent:
            check_agent(agent=True, method=method, agent_tokens=agent_tokens)
            if agent_max_new_tokens < 1:
                raise UsageError(f"the agent's max_new_tokens must be at least 1 (got {agent_max_new_tokens})")
        adapter = self.adapter

        t_pre = self._sync()
        vt, reused, vision_ms = self._encode(prepared)
        t_vis = self._sync()
        agent_answers = None
        if agent:
            agent_answers = self._agent_answers(
                prepared, vt, questions, budgets if agent_tokens is None else [agent_tokens] * len(questions),
                method=method, explicit_budget=agent_tokens is not None, max_new_tokens=agent_max_new_tokens,
                alpha=alpha, tau_t=tau_t, tau_v=tau_v, **conventions,
            )
        t_agent = self._sync() if agent else t_vis
        kept = order = fed = None
        if method != "full":
            selection = self._select(vt, questions, budgets, method=method, alpha=alpha, tau_t=tau_t, tau_v=tau_v,
                                     agent_answers=agent_answers, prepared=prepared, post_prompt=prepared.post_prompt,
                                     **conventions)
            kept, order = selection.indices, selection.order
            feed_tokens, feed_kept = merged_feed(vt, selection)
            fed = [len(f) for f in feed_kept]
            gen_inputs = adapter.generation_inputs(prepared, feed_tokens, feed_kept)
        else:
            gen_inputs = adapter.generation_inputs(prepared, vt, None)
        t_sel = self._sync()

        clock = _Clock()
        # Greedy decoding is deterministic, so one run to the largest limit, cut per item, gives
        # every item exactly what a run with its own limit would.
        new_tokens = self._generate(
            gen_inputs, max(limits), sampling, streamer=clock,
            **({"stopping_criteria": StoppingCriteriaList([stopping_criteria])} if stopping_criteria else {}),
            # EOS is masked out until the limit: every row does the same, fixed amount of work.
            **({"min_new_tokens": max(limits)} if ignore_eos else {}),
        )
        t_end = self._sync()

        per_item = len(questions)
        timings = {
            "preprocess": preprocess_ms,
            "vision": (t_vis - t_pre) * 1e3,
            **({"agent": (t_agent - t_vis) * 1e3} if agent else {}),
            "select": (t_sel - t_agent) * 1e3,
            "prefill": ((clock.first_token or t_end) - t_sel) * 1e3,
            "decode": (t_end - (clock.first_token or t_end)) * 1e3,
        }
        timings["total"] = sum(timings.values())
        share = {k: v / per_item for k, v in timings.items()}
        counts = vt.counts
        unpruned = prepared.inputs["attention_mask"].sum(1).tolist()
        pruned = gen_inputs["attention_mask"].sum(1).tolist()
        finished = self._finish([ids[: limits[row]] for row, ids in enumerate(new_tokens)])
        # Per item, not per batch: an image of one view gets no `budget`, whatever its batch mates are.
        last_view = [0] * len(counts) if vt.parts is None or method == "full" else vt.parts.amax(1).tolist()
        words = {"question_words": question_words} if method in AGENT_METHODS else {}
        sizes = input_counts(vt)
        by_input = kept_by_input(vt, kept if kept is not None else [torch.arange(n) for n in counts])
        answers = []
        for row, (ids, text) in enumerate(finished):
            kept_row = list(range(counts[row])) if kept is None else kept[row].tolist()
            order_row = kept_row if order is None else order[row].tolist()
            kept_inputs = [idx.tolist() for idx in by_input[row]]
            answers.append(
                Answer(
                    answer=text,
                    output_ids=ids,
                    vision_total=counts[row],
                    vision_kept=len(kept_row) if fed is None else fed[row],
                    kept_indices=kept_inputs,
                    kept_order=[order_row],
                    prompt_unpruned=unpruned[row],
                    prompt_pruned=pruned[row],
                    speedup_estimated=round(estimated_speedup(adapter.model.config, unpruned[row], pruned[row]), 3),
                    timings_ms=_item_timings(share, vision_ms[row]),
                    agent_answer=None if agent_answers is None else agent_answers[row],
                    conventions={**({"budget": budget} if last_view[row] > 0 else {}), **words},
                    vision_cached=reused[row],
                    vision_inputs=_input_fields(prepared, row, sizes[row], kept_inputs, fed),
                )
            )
        return answers

    def _encode(self, prepared: Prepared) -> tuple[VisionTokens, list[bool], list[float]]:
        """The batch's vision tokens, each row's "not encoded for it", and each row's vision cost in ms.

        With the cache: the images it lacks are encoded once each (one pass for the batch), stored, and the batch
        is joined from the entries. The encoding's time goes to the rows that were encoded, the join's to all.
        """
        adapter, cache = self.adapter, self.cache
        if cache is None or prepared.keys is None and not prepared.images:
            start = self._sync()
            vt = adapter.encode(prepared)
            share = (self._sync() - start) * 1e3 / prepared.rows
            return vt, [False] * prepared.rows, [share] * prepared.rows
        start = self._sync()
        if prepared.keys is None:  # prepared without `Engine.prepare`
            if not prepared.pixels:
                raise ValueError("the cache needs the batch's images or their keys (Engine.prepare)")
            prepared.keys = adapter.image_keys(prepared.images)
        keys = prepared.keys
        found = {key: cache.get(key) for key in dict.fromkeys(keys)}
        first_rows = {key: row for row, key in reversed(list(enumerate(keys)))}
        encoded = sorted(row for key, row in first_rows.items() if found[key] is None)  # one row per missing image
        if encoded:
            subset = prepared if len(encoded) == len(keys) else adapter.image_inputs(prepared, encoded)
            for row, entry in zip(encoded, adapter.encode(subset).split()):
                found[keys[row]] = entry
                cache.put(keys[row], entry)
        cache.stats.misses += len(encoded)
        cache.stats.hits += len(keys) - len(encoded)
        encoded_at = self._sync()
        vt = type(found[keys[0]]).join([found[key] for key in keys])
        joined = (self._sync() - encoded_at) * 1e3 / len(keys)
        payers = set(encoded) or set(range(len(keys)))  # without an encoding, all share the look-ups
        paid = (encoded_at - start) * 1e3 / len(payers)
        vision_ms = [joined + (paid if row in payers else 0.0) for row in range(len(keys))]
        return vt, [row not in encoded for row in range(len(keys))], vision_ms

    def _agent_answers(
        self,
        prepared: Prepared,
        vt: VisionTokens,
        questions: list[str],
        budgets: list[int],
        *,
        method: str,
        explicit_budget: bool,
        max_new_tokens: int,
        alpha: float,
        tau_t: float | None,
        tau_v: float,
        budget: str,
        question_words: str,
    ) -> list[str]:
        """The agent's first pass for the whole batch at once: one preliminary answer per question."""
        if self.agent_engine is not None:
            # The second model has its own processor, vision tokens and tau_t; a small model reads them all
            # unless the caller gave it a budget.
            answers = self.agent_engine.run(
                list(prepared.images), questions, post_prompt=prepared.post_prompt,
                method=method if explicit_budget else "full", tokens=budgets,
                max_new_tokens=max_new_tokens, alpha=alpha, tau_v=tau_v, budget=budget, question_words=question_words,
            )
            return [a.answer for a in answers]
        kept = self._select(vt, questions, budgets, method=method, alpha=alpha, tau_t=tau_t, tau_v=tau_v,
                            budget=budget, question_words=question_words, post_prompt=prepared.post_prompt).indices
        new_tokens = self._generate(self.adapter.generation_inputs(prepared, vt, kept), max_new_tokens)
        return [text for _, text in self._finish(new_tokens)]

    def _select(
        self, vt: VisionTokens, questions: list[str], budgets: list[int], *, method: str, alpha: float,
        tau_t: float | None, tau_v: float, agent_answers: list[str] | None = None,
        prepared: Prepared | None = None, budget: str = "total", question_words: str = "content",
        post_prompt: str | None = None,
    ) -> Selection:
        """T from the questions (and the agent's words; `post_prompt` as `text.question_words` says), then the
        adapter's selection; tau_t None: the family's.

        `random` draws with a seed per image from its pixels (`image_seed`), when `prepared` has them or the images;
        `visionzip` reads the adapter's `visionzip_inputs` (`prepared` needed)."""
        adapter = self.adapter
        text, text_mask = adapter.text_tokens(questions, agent_answers, words=question_words, post_prompt=post_prompt)
        seeds = None
        if method == "random" and prepared is not None:
            seeds = prepared.seeds or ([image_seed(im) for im in prepared.images] if prepared.pixels else None)
            if not seeds:  # a default seed would silently draw other tokens than the same batch with its images
                raise ValueError("random needs the batch's images or their seeds (Engine.prepare(seeds=True))")
        zip_inputs = None
        if method == "visionzip":
            if prepared is None:
                raise ValueError("visionzip needs the prepared batch")
            zip_inputs = adapter.visionzip_inputs(prepared, vt)
        return adapter.select(
            vt, text, text_mask, budgets, method=method, seeds=seeds, budget=budget, zip_inputs=zip_inputs,
            alpha=alpha, tau_t=adapter.tau_t if tau_t is None else tau_t, tau_v=tau_v,
        )

    def _generate(
        self, gen_inputs: dict, max_new_tokens: int, sampling: Sampling | None = None, **extra: Any
    ) -> list[list[int]]:
        """Generation for the batch, greedy unless `sampling` says otherwise; each row's new token ids, not yet cut
        at EOS. Never beam search: the timing streamer and the per-row stopping need one sequence per row."""
        pad_id = self.adapter.tokenizer.pad_token_id
        decoding = {"do_sample": False}
        if sampling is not None:
            sampling = sampling.resolved(self.adapter.model.generation_config)
            decoding = sampling.generate_kwargs()
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        out = self.adapter.model.generate(
            **gen_inputs, max_new_tokens=max_new_tokens, num_beams=1, **decoding, **extra,
            **({"pad_token_id": pad_id} if pad_id is not None else {}),
        )
        return out[:, gen_inputs["input_ids"].shape[1] :].tolist()

    def _finish(self, rows: list[list[int]]) -> list[tuple[list[int], str]]:
        """Each row's ids cut at its first EOS, and their decoded text."""
        tokenizer = self.adapter.tokenizer
        eos = set(_as_list(self.adapter.model.generation_config.eos_token_id))
        cut = [_until_eos(ids, eos) for ids in rows]
        return [(ids, tokenizer.decode(ids, skip_special_tokens=True).strip()) for ids in cut]

    def ask(self, image: Any, question: str, **options: Any) -> Answer:
        """Answer one question about one image, video, or list of them (see `run` for the options)."""
        return self.run([image], [question], **options)[0]


def image_seed(image: Any, seed: int = RANDOM_SEED) -> int:
    """`random`'s seed for an item: a checksum of its pixels (an image's, a video's sampled frames, or those of each
    input in turn), so the draw follows the item, not its batch."""
    for visual in as_visuals(image):
        for strip in [visual.frames.tobytes()] if is_video(visual) else pixel_strips(visual):
            seed = zlib.crc32(strip, seed)
    return seed


def _input_fields(prepared: Prepared, row: int, sizes: list[int], kept: list[list[int]],
                  fed: list[int] | None) -> list[dict[str, Any]]:
    """`Answer.vision_inputs` of one row: each input's kind, tokens and kept tokens (a video's frames too)."""
    visuals = prepared.visuals[row] if prepared.images else [None] * len(sizes)
    out = []
    for visual, size, idx in zip(visuals, sizes, kept):
        # visionzip feeds new rows (`fed`); an item of one input counts those
        n_kept = fed[row] if fed is not None and len(sizes) == 1 else len(idx)
        entry: dict[str, Any] = {"kind": "video" if is_video(visual) else "image", "total": size, "kept": n_kept}
        if is_video(visual):
            entry["frames"] = len(visual.indices)
        out.append(entry)
    return out


def check_agent_model(name: str) -> None:
    """The agent model can be found (its config only: seconds), or a one-line error that names --agent-model."""
    from .models.registry import check_model

    try:
        check_model(name)
    except MmtokError as exc:
        raise _agent_model_error(exc) from None


def _agent_model_error(exc: MmtokError) -> MmtokError:
    """A loading error about the agent's model: the registry's message, naming the agent's option."""
    return type(exc)(f"agent model: {str(exc).replace('--model', '--agent-model')}")


def _item_timings(share: dict[str, float], vision_ms: float) -> dict[str, float]:
    """One item's timings: its share of the batch's stages, but its own vision cost (the cache makes them differ)."""
    timings = {**share, "vision": vision_ms, "total": share["total"] - share["vision"] + vision_ms}
    return {k: round(v, 3) for k, v in timings.items()}


def _per_item(value: int | Sequence[int], n: int, what: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"need one {what} per image")
    return values


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    """Generated ids up to and including the first end-of-sequence token (drops batch padding after it)."""
    for i, tok in enumerate(ids):
        if tok in eos:
            return ids[: i + 1]
    return ids
