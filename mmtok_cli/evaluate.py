"""`mmtok eval`: every method x budget over labelled JSONL, through the batch runner, scored.

Each configuration is one `BatchRunner` run over each block of items (the batch command's loader, batching and
error handling); the first one preprocesses the block, the others answer its prepared chunks again. `full`
always runs once (budgets mean nothing to it) because retention is measured against it. The headline metric is POPE's F1 when every item is a yes/no question, else accuracy;
retention = that metric / full's. With the agent, each method that reads the question's tokens (mmtok,
text) also runs with it, as its own row labelled `mmtok+agent`, so one run compares both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import options
from .errors import MmtokError, UsageError
from .io import Item, open_source, parse_line, write_text, writing
from .metrics import normalize, score


def parse_methods(text: str) -> list[str]:
    """`full,mmtok,random` -> a list without repeats; 'full' is always included (first)."""
    return ["full", *dict.fromkeys(m for m in options.parse_methods(text) if m != "full")]


def parse_tokens(text: str) -> list[int]:
    try:
        budgets = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--tokens must be comma-separated integers, like 64,16,4 (got '{text}')") from None
    if not budgets or min(budgets) < 1:
        raise UsageError(f"--tokens needs budgets of at least 1 (got '{text}')")
    return list(dict.fromkeys(budgets))


BLOCK_BATCHES = 4
"""Batches per block: `evaluate` runs every configuration on a block of items before the next block, so the
engine's cache needs to hold a block's images, not a whole file's, to encode each image once."""

POPE_KEYS = {"text": "question", "label": "answer", "question_id": "id"}
"""The official POPE files' keys (`{"question_id", "image", "text", "label"}` per line) as ours."""


def is_pope(line: str) -> bool:
    """A JSONL line in POPE's own format: the question under 'text', no 'question'."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return False  # parse_line reports it
    return isinstance(data, dict) and "text" in data and "question" not in data


def load_labelled(path: Path, images: Path | None = None) -> tuple[list[Item], Path]:
    """The items of a labelled JSONL file (ours or POPE's official format) and the folder their images are
    relative to: `images`, else the file's own folder (POPE files name bare COCO files: they need `images`).

    One-line errors for a missing file, no items, a broken line, a line without 'answer' ('label' in POPE's
    format) and a POPE file without `images`."""
    if not path.is_file():
        raise UsageError(f"DATA '{path}' not found (expected a JSONL file with image, question and answer, or a "
                         "POPE file with image, text and label)")
    with path.open(encoding="utf-8", errors="replace") as fp:
        # Blank lines carry nothing to score; skip them by content, keeping every other line's number.
        lines = [(number, text.rstrip("\r\n")) for number, text in enumerate(fp, start=1) if text.strip()]
    if not lines:
        raise UsageError(f"no items in '{path}'")
    pope = is_pope(lines[0][1])
    label = "label" if pope else "answer"
    if pope and images is None:
        raise UsageError(f"{path} is in POPE's format, whose image names have no folder: give --images DIR "
                         "(for the official files, the COCO val2014 folder)")
    items = [parse_line(text, number, rename=POPE_KEYS if pope else None) for number, text in lines]
    for it in items:
        if it.error:
            error = it.error.replace("'question'", "'text'") if pope else it.error  # name the key the file uses
            raise UsageError(f"{path}: {error}")
        answer = it.extra.get("answer")
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
            raise UsageError(f"{path}: line {it.line} has no '{label}' (needed to score the predictions)")
    return items, images if images is not None else path.parent


def evaluate(
    engine: Any,
    items: list[Item],
    *,
    methods: Sequence[str],
    budgets: Sequence[int],
    base: Path | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 10,
    progress: Callable[[str], None] | None = None,
    predictions: Callable[[list[dict[str, Any]]], None] | None = None,
    agent: bool = False,
    agent_tokens: int | None = None,
    selection: dict[str, float | str] | None = None,
    post_prompt: str | None = None,
    preprocess_once: bool = True,
) -> dict[str, Any]:
    """Run and score every configuration; returns the `--json` document (without `model`/`data`).

    `predictions`, when given, receives per configuration one record per item: method, tokens, id,
    question, answer (the label), prediction, correct, error.

    `agent`: methods in `AGENT_METHODS` also run with the agent (its first pass at `agent_tokens`, default
    each row's budget; a second model when `engine` has an `agent_engine`), labelled METHOD+agent.
    `selection`: alpha / tau_t / tau_v / budget / question_words for every run (the defaults where absent); the
    report lists the values used. `post_prompt`: appended to every question (`Engine.prepare`), in the report.
    `preprocess_once=False` runs the processor again for every row, as `mmtok eval` did before (benchmarks/cache.py
    compares the two).
    """
    from .batch import BatchOptions, BatchRunner, Summary

    answers = [str(it.extra["answer"]) for it in items]
    questions = [it.question or "" for it in items]
    binary_only = all(normalize(a) in ("yes", "no") for a in answers)
    variants: list[tuple[str, bool]] = []  # (method, with the agent): each agent row right after its plain twin
    for m in methods:
        if m != "full":
            variants += [(m, False)] + ([(m, True)] if agent and m in options.AGENT_METHODS else [])
    configs: list[tuple[str, int | str, bool]] = [("full", "full", False)] + [
        (m, b, a) for m, a in variants for b in budgets
    ]
    # Block by block, every configuration in turn: each block's images are decoded once and preprocessed once (by the
    # first configuration, whose prepared chunks the others answer again), encoded once and served from the engine's
    # cache to all the others. Items are grouped by image first, so an image's questions share a block; records go
    # back to input order.
    order = _group_by_image(items)
    size = batch_size * BLOCK_BATCHES
    blocks = [[items[i] for i in order[start : start + size]] for start in range(0, len(order), size)]
    found: list[list[dict[str, Any]]] = [[] for _ in configs]
    summaries = [Summary() for _ in configs]
    stats_before = _cache_stats(engine)
    for number_block, block in enumerate(blocks, start=1):
        block = _decoded(block, base)
        prepared: list = []  # the block's chunks, preprocessed by the first configuration for all of them
        for number, (name, tokens, with_agent) in enumerate(configs):
            method = f"{name}+agent" if with_agent else name
            if progress:
                where = f"block {number_block}/{len(blocks)} · " if len(blocks) > 1 else ""
                progress(f"{where}{method} · tokens {tokens} ({number + 1}/{len(configs)})")
            batch_options = BatchOptions(tokens=1 if tokens == "full" else int(tokens), method=name,
                                         max_new_tokens=max_new_tokens, batch_size=batch_size, agent=with_agent,
                                         agent_tokens=agent_tokens if with_agent else None,
                                         selection=dict(selection or {}), post_prompt=post_prompt)
            runner = BatchRunner(engine, batch_options, base=base)
            summaries[number].add(runner.run(block, found[number].extend, reuse=prepared if preprocess_once else None))
    results = []
    for (name, tokens, with_agent), got_records, summary in zip(configs, found, summaries):
        method = f"{name}+agent" if with_agent else name
        records: list[dict[str, Any]] = [{}] * len(items)
        for position, rec in zip(order, got_records):
            records[position] = rec
        totals = summary.as_dict()
        got = [r["answer"] if r["error"] is None else None for r in records]
        scored = score(got, answers, questions)
        pope = scored["pope"]
        results.append({
            "method": method,
            "tokens": tokens,
            "accuracy": round(scored["accuracy"], 4),
            "f1": None if pope is None else round(pope["f1"], 4),
            "pope": None if pope is None else {k: round(v, 4) for k, v in pope.items()},
            "metric": pope["f1"] if binary_only and pope else scored["accuracy"],
            "mean_kept": totals["mean_vision_tokens_kept"],
            "failed": summary.failed,
            "items_per_s": totals["items_per_s"],
            "vision_cached": summary.cached,
        })
        if predictions:
            predictions([
                {"method": method, "tokens": tokens, "id": r["id"], "question": q, "answer": a,
                 "prediction": p, "correct": c, "error": r["error"]}
                for r, q, a, p, c in zip(records, questions, answers, got, scored["correct"])
            ])
    full = results[0]["metric"]
    for row in results:
        row["retention"] = round(row["metric"] / full, 4) if full else None
        row["metric"] = round(row["metric"], 4)
    from .selection import ALPHA, TAU_V

    used = {"alpha": ALPHA, "tau_t": engine.adapter.tau_t, "tau_v": TAU_V, "budget": "total",
            "question_words": "content", **(selection or {})}
    cache = {k: v - stats_before.get(k, 0) for k, v in _cache_stats(engine).items()}
    return {"metric": "f1" if binary_only else "accuracy", "items": len(items), "selection": used,
            "post_prompt": post_prompt, "pan_and_scan": engine.pan_and_scan, "results": results,
            "cache": cache or None}


def _decoded(block: list[Item], base: Path | None) -> list[Item]:
    """The block's items with their images decoded once for every configuration (`Item.picture`); an image that
    cannot be opened is left to the batch runner, which gives its item the error each time."""
    pictures: dict[str, Any] = {}
    out = []
    for it in block:
        if it.error is not None or it.picture is not None or not it.image:
            out.append(it)
            continue
        if it.image not in pictures:
            try:
                pictures[it.image] = open_source(it.image, base)
            except MmtokError:
                pictures[it.image] = None
        picture = pictures[it.image]
        out.append(it if picture is None else replace(it, picture=picture))
    return out


def _group_by_image(items: Sequence[Item]) -> list[int]:
    """Item positions with each image's questions together, images in the order they first appear."""
    images = [it.image if isinstance(it.image, str) else position for position, it in enumerate(items)]
    first: dict[Any, int] = {}
    for position, image in enumerate(images):
        first.setdefault(image, position)
    return sorted(range(len(items)), key=lambda position: first[images[position]])


def _cache_stats(engine: Any) -> dict[str, int]:
    cache = getattr(engine, "cache", None)
    return {} if cache is None else cache.stats.as_dict()


def plot(reports: Sequence[dict[str, Any]], path: str | Path) -> None:
    """The headline metric against the budget, one line per method and one panel per report (data file);
    full as a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4), squeeze=False)
    for ax, report in zip(axes[0], reports):
        metric = report["metric"]
        key = "f1" if metric == "f1" else "accuracy"
        rows = report["results"]
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: 0 if r["tokens"] == "full"
                          else r["tokens"])
            if method == "full":
                ax.axhline(mine[0][key], linestyle="--", color="grey", label="full")
            else:
                ax.plot([r["tokens"] for r in mine], [r[key] for r in mine], marker="o", label=method)
        ax.set_xscale("log", base=2)
        budgets = sorted({r["tokens"] for r in rows if r["tokens"] != "full"})
        if budgets:
            ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("vision tokens kept per image")
        ax.set_ylabel(metric)
        ax.set_title(f"{report.get('model', '')} on {Path(str(report.get('data', ''))).name}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with writing(path, "--plot"):
        fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(report: dict[str, Any], path: Path) -> None:
    write_text(path, json.dumps(report, indent=2) + "\n", "--json")
