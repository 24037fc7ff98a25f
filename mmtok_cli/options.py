"""Option defaults and checks shared by the commands and the engine.

Kept free of torch/transformers imports so the CLI can reject bad input in milliseconds,
before the seconds-long import of the ML stack.
"""

from __future__ import annotations

import math

from .errors import UsageError

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
METHODS = ("mmtok", "full", "random", "uniform", "vision", "text", "divprune", "visionzip")
METHOD_HELP = {
    "mmtok": "coverage of the question's tokens and of all vision tokens (the default)",
    "full": "no pruning: every vision token",
    "random": "k random tokens, seeded per image from its pixels (an image gets the same tokens in any batch)",
    "uniform": "k tokens evenly spaced over the image's tokens (row-major grid for LLaVA, token order otherwise)",
    "vision": "coverage of the vision tokens only (MMTok's alpha*Q term)",
    "text": "coverage of the question's tokens only (MMTok's P term; vision if the question has none)",
    "divprune": "max-min diversity of the tokens, cosine distance (DivPrune, as its authors' code: V on LLaVA, U on Qwen)",
    "visionzip": "the tokens the CLS attends to most, plus the rest merged into a few (VisionZip; LLaVA, LLaVA-NeXT)",
}
"""One line per method, for --help and the README."""
DTYPES = ("auto", "float32", "bfloat16", "float16")
BUDGETS = ("total", "per-view", "global")
"""What --tokens K means for an image made of several views (crops, tiles; see models/views.py): K in total,
split evenly over the views (the default); K for every view (the MMTok and DivPrune authors' LLaVA-NeXT code);
or one selection of K over all the views at once."""
QUESTION_WORDS = ("content", "all")
"""The question's words that make T: its content words (stop words and answer-format instructions dropped, the
default), or all of `"Question: " + question` split on whitespace (the MMTok authors' Qwen code, exactly)."""
AGENT_METHODS = ("mmtok", "text")
"""The methods that read the question's tokens T, so the only ones the agent can change."""
AGENT_MAX_NEW_TOKENS = 16
"""Longest preliminary answer the agent's first pass generates: a short answer's words, cheaply."""


def check_options(
    *, tokens: int, method: str, max_new_tokens: int, dtype: str = "auto", device: str = "auto"
) -> None:
    """Reject impossible requests up front, before any slow model loading."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype '{dtype}'; use {', '.join(DTYPES)}")
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UsageError(f"unknown --device '{device}'; use auto, cpu, cuda or cuda:N")
    if method not in METHODS:
        raise UsageError(f"unknown --method '{method}'; choose one of {', '.join(METHODS)}")
    if tokens < 1:
        raise UsageError(f"--tokens must be at least 1 (got {tokens})")
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")


def check_cache(cache_mb: int | None) -> None:
    """--cache-mb: None (the device's default) or a number of megabytes, 0 for no cache."""
    if cache_mb is not None and cache_mb < 0:
        raise UsageError(f"--cache-mb must be 0 (no cache) or more (got {cache_mb})")


def check_post_prompt(post_prompt: str | None) -> None:
    """--post-prompt: None (nothing appended) or some text; an empty one is a mistake, not "none"."""
    if post_prompt is not None and not post_prompt.strip():
        raise UsageError("--post-prompt is empty; give the instruction to append to every question, or leave it out")


def check_conventions(*, budget: str | None = None, question_words: str | None = None) -> None:
    """The one check of --budget and --question-words (None: not given), for the CLI and `Adapter.select`."""
    if budget is not None and budget not in BUDGETS:
        raise UsageError(f"unknown --budget '{budget}'; use {', '.join(BUDGETS)}")
    if question_words is not None and question_words not in QUESTION_WORDS:
        raise UsageError(f"unknown --question-words '{question_words}'; use {', '.join(QUESTION_WORDS)}")


def selection_params(
    *, alpha: float | None, tau_t: float | None, tau_v: float | None, budget: str | None = None,
    question_words: str | None = None,
) -> dict[str, float | str]:
    """The selection parameters a user set, checked, as `Engine.run_prepared` keywords (None: the default).

    --alpha must be a finite number >= 0, the temperatures finite and > 0; --budget one of `BUDGETS`,
    --question-words one of `QUESTION_WORDS`.
    """
    check_conventions(budget=budget, question_words=question_words)
    if alpha is not None and not (math.isfinite(alpha) and alpha >= 0):
        raise UsageError(f"--alpha must be a number of at least 0 (got {alpha})")
    for flag, tau in (("--tau-t", tau_t), ("--tau-v", tau_v)):
        if tau is not None and not (math.isfinite(tau) and tau > 0):
            raise UsageError(f"{flag} must be a number above 0 (got {tau})")
    given = {"alpha": alpha, "tau_t": tau_t, "tau_v": tau_v, "budget": budget, "question_words": question_words}
    return {name: value for name, value in given.items() if value is not None}


def parse_methods(text: str) -> list[str]:
    """`mmtok,full` -> the named methods in order (repeats kept: each command decides about those);
    one-line usage errors for an empty list or an unknown name."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise UsageError(f"--methods is empty; give one or more of {', '.join(METHODS)}, separated by commas")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UsageError(f"unknown method '{unknown[0]}' in --methods; choose from {', '.join(METHODS)}")
    return methods


def check_agent(
    *, agent: bool, method: str | None, agent_model: str | None = None, agent_tokens: int | None = None
) -> None:
    """Reject agent options that cannot work; `method` None skips the method check (eval checks its list)."""
    if not agent:
        if agent_model is not None or agent_tokens is not None:
            raise UsageError("--agent-model and --agent-tokens go with --agent (they set up its first pass)")
        return
    if method is not None and method not in AGENT_METHODS:
        raise UsageError(
            f"--agent changes only the methods that use the question's tokens ({', '.join(AGENT_METHODS)}); "
            f"--method {method} never reads them"
        )
    if agent_tokens is not None and agent_tokens < 1:
        raise UsageError(f"--agent-tokens must be at least 1 (got {agent_tokens})")
    if agent_model is not None and not agent_model.strip():
        raise UsageError("--agent-model is empty; give a hub id or a local checkpoint folder")
