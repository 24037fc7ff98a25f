"""Load a model once, then answer batches: preprocess -> encode -> select -> generate, timed.

Data flows one way: the engine asks the adapter for V/U/T, hands them to `selection.select`, asks
the adapter for the shortened generation inputs and calls transformers' own `generate`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from .errors import UsageError
from .flops import estimated_speedup
from .models import Adapter, load_adapter
from .models.base import Prepared
from .options import DEFAULT_MODEL, DTYPES, check_options
from .selection import ALPHA, TAU_V

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Answer:
    """One item's result. Timings are the item's share of its batch, in milliseconds."""

    answer: str
    output_ids: list[int]
    vision_total: int
    vision_kept: int
    kept_indices: list[list[int]]
    kept_order: list[list[int]]
    """`kept_indices` in the order the selection picked them (first = picked first); index order for
    full, random and uniform, and wherever everything was kept."""
    prompt_unpruned: int
    prompt_pruned: int
    speedup_estimated: float = 1.0
    """Language-model prefill FLOPs unpruned / pruned, from the config (an estimate, see flops.py)."""
    timings_ms: dict[str, float] = field(default_factory=dict)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown --device '{name}'; use auto, cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in TORCH_DTYPES:
        raise UsageError(f"unknown --dtype '{name}'; use {', '.join(DTYPES)}")
    return TORCH_DTYPES[name]


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
        self, model: str = DEFAULT_MODEL, *, device: str = "auto", dtype: str = "auto", random_weights: bool = False
    ) -> None:
        """`random_weights=True`: build the checkpoint's architecture with random weights (see `load_adapter`)."""
        self.model_name = model
        self.random_weights = random_weights
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.adapter: Adapter = load_adapter(model, device=self.device, dtype=self.dtype, random_weights=random_weights)

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def preprocessor(self) -> Adapter:
        """An adapter for a background thread: shares the model, owns a copy of the processor
        (fast tokenizers must not be used from two threads at once)."""
        return self.adapter.for_thread()

    def prepare(self, images: list[Image.Image], questions: list[str], *, adapter: Adapter | None = None) -> Prepared:
        """Processor inputs for a batch (CPU work; safe in a background thread with `preprocessor()`)."""
        if len(images) != len(questions) or not images:
            raise ValueError("need one question per image, and at least one image")
        return (adapter or self.adapter).preprocess(images, questions)

    def run(self, images: list[Image.Image], questions: list[str], **options: Any) -> list[Answer]:
        """Answer one question per image as a single batch: `prepare`, then `run_prepared` with `options`
        (tokens, method, max_new_tokens, alpha, tau_t, tau_v, ignore_eos; see there)."""
        t0 = self._sync()
        prepared = self.prepare(images, questions)
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
        preprocess_ms: float = 0.0,
        ignore_eos: bool = False,
    ) -> list[Answer]:
        """Answer the questions of a batch made by `prepare`.

        `tokens` and `max_new_tokens` are one value for all or one per image. `ignore_eos=True`
        generates exactly `max_new_tokens` (the largest) for every image, for fixed-work timing.
        `preprocess_ms` is what `prepare` took, for the timings.
        """
        budgets = _per_item(tokens, len(questions), "token budget")
        limits = _per_item(max_new_tokens, len(questions), "max_new_tokens")
        check_options(tokens=min(budgets), method=method, max_new_tokens=min(limits))
        adapter = self.adapter

        t_pre = self._sync()
        vt = adapter.encode(prepared)
        t_vis = self._sync()
        kept = order = None
        if method != "full":
            text, text_mask = adapter.text_tokens(questions)
            selection = adapter.select(
                vt, text, text_mask, budgets, method=method,
                alpha=alpha, tau_t=adapter.tau_t if tau_t is None else tau_t, tau_v=tau_v,
            )
            kept, order = selection.indices, selection.order
        gen_inputs = adapter.generation_inputs(prepared, vt, kept)
        t_sel = self._sync()

        clock = _Clock()
        pad_id = adapter.tokenizer.pad_token_id
        # Greedy decoding is deterministic, so one run to the largest limit, cut per item, gives
        # every item exactly what a run with its own limit would.
        out = adapter.model.generate(
            **gen_inputs,
            max_new_tokens=max(limits),
            do_sample=False,
            num_beams=1,
            streamer=clock,
            # EOS is masked out until the limit: every row does the same, fixed amount of work.
            **({"min_new_tokens": max(limits)} if ignore_eos else {}),
            **({"pad_token_id": pad_id} if pad_id is not None else {}),
        )
        t_end = self._sync()

        new_tokens = out[:, gen_inputs["input_ids"].shape[1] :].tolist()
        per_item = len(questions)
        timings = {
            "preprocess": preprocess_ms,
            "vision": (t_vis - t_pre) * 1e3,
            "select": (t_sel - t_vis) * 1e3,
            "prefill": ((clock.first_token or t_end) - t_sel) * 1e3,
            "decode": (t_end - (clock.first_token or t_end)) * 1e3,
        }
        timings["total"] = sum(timings.values())
        share = {k: round(v / per_item, 3) for k, v in timings.items()}
        counts = vt.counts
        unpruned = prepared.inputs["attention_mask"].sum(1).tolist()
        pruned = gen_inputs["attention_mask"].sum(1).tolist()
        eos = set(_as_list(adapter.model.generation_config.eos_token_id))
        answers = []
        for row, ids in enumerate(new_tokens):
            ids = _until_eos(ids[: limits[row]], eos)
            kept_row = list(range(counts[row])) if kept is None else kept[row].tolist()
            order_row = kept_row if order is None else order[row].tolist()
            answers.append(
                Answer(
                    answer=adapter.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                    output_ids=ids,
                    vision_total=counts[row],
                    vision_kept=len(kept_row),
                    kept_indices=[kept_row],
                    kept_order=[order_row],
                    prompt_unpruned=unpruned[row],
                    prompt_pruned=pruned[row],
                    speedup_estimated=round(estimated_speedup(adapter.model.config, unpruned[row], pruned[row]), 3),
                    timings_ms=dict(share),
                )
            )
        return answers

    def ask(self, image: Image.Image, question: str, **options: Any) -> Answer:
        """Answer one question about one image (see `run` for the options)."""
        return self.run([image], [question], **options)[0]


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
