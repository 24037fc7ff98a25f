"""What encoding each image once buys: `mmtok batch` and `mmtok eval` with the vision-token cache on and off.

    python benchmarks/cache.py --arch cpu-small --device cpu --json cache.json
    python benchmarks/cache.py --eval --model demo --device cpu

Batch part: IMAGES images x QUESTIONS questions (`--tokens 64`, 1 new token, batch 8) through `BatchRunner`, the
code behind `mmtok batch`, on a real architecture with random weights (`--arch`, as `mmtok profile`) or a
checkpoint (`--model`). Items go question by question (every batch shows IMAGES different images), so
what the cache saves is the vision encoder's work across batches. Cache on and off alternate within each repeat
(a fresh cache per run, so every run encodes each image once), and the medians of items/s are compared; the answers
of the two must be identical.

Eval part (`--eval`): `mmtok eval`'s method x budget table (BENCHMARKS.md's demo table: 8 methods x 4 budgets) on
`mmtok synth --n N` with the cache on and off, alternating; wall seconds and their ratio. With `--eval-preprocess`,
the cache stays on and what alternates is preprocessing each block once for all rows (`mmtok eval` today) against
running the processor again for every row (before issue 24); the tables must be identical.

    python benchmarks/cache.py --eval --eval-preprocess --model demo --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from mmtok_cli.batch import BatchOptions, BatchRunner
from mmtok_cli.engine import Engine
from mmtok_cli.io import Item

QUESTIONS = ["What is in this image?", "Is there a red circle in the picture?", "Describe the photo in detail.",
             "How many people are there?", "What colour is the largest object?", "Is it indoors or outdoors?"]
EVAL_METHODS = "full,mmtok,random,uniform,vision,text,divprune,visionzip"


def _engine(args: argparse.Namespace) -> Engine:
    if args.arch:
        from mmtok_cli.profile import load_arch

        return load_arch(args.arch, device=args.device, dtype=args.dtype)
    return Engine(args.model, device=args.device, dtype=args.dtype)


def _images(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def batch_part(args: argparse.Namespace, engine: Engine) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="mmtok-cache-"))
    names = _images(folder, args.images, (args.width, args.height))
    items = [(name, q) for q in QUESTIONS[: args.questions] for name in names]
    options = BatchOptions(tokens=args.tokens, max_new_tokens=1, batch_size=args.batch_size)

    def run(cache_mb: int) -> tuple[float, list[str], int]:
        engine.set_cache(cache_mb)  # a fresh cache: every run encodes each image once
        records: list[dict[str, Any]] = []
        todo = [Item(id=i, image=name, question=q, line=i + 1) for i, (name, q) in enumerate(items)]
        summary = BatchRunner(engine, options, base=folder).run(todo, records.extend)
        if summary.failed:
            raise RuntimeError(f"{summary.failed} items failed: {records[0]['error']}")
        return summary.items_per_s, [r["answer"] for r in records], summary.cached

    on_mb = args.cache_mb
    run(on_mb), run(0)  # warm-up: allocator, first-call kernels, file cache
    rates: dict[str, list[float]] = {"on": [], "off": []}
    answers: dict[str, list[str]] = {}
    reused = 0
    for _ in range(args.repeats):
        for mode in ("on", "off"):
            rate, got, cached = run(on_mb if mode == "on" else 0)
            rates[mode].append(rate)
            answers.setdefault(mode, got)
            if answers[mode] != got:
                raise RuntimeError(f"cache {mode}: answers changed between repeats")
            reused = cached if mode == "on" else reused
    if answers["on"] != answers["off"]:
        raise RuntimeError("answers differ with the cache on and off")
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {
        "items": len(items), "images": args.images, "questions_per_image": args.questions, "tokens": args.tokens,
        "batch_size": args.batch_size, "image_size": [args.width, args.height], "repeats": args.repeats,
        "cache_mb": on_mb, "items_reusing_tokens": reused,
        "items_per_s": {"on": round(on, 3), "off": round(off, 3), "on_runs": rates["on"], "off_runs": rates["off"]},
        "ratio": round(on / off, 3), "answers_identical": True,
    }


def eval_part(args: argparse.Namespace, engine: Engine) -> dict[str, Any]:
    from mmtok_cli.evaluate import evaluate, load_labelled, parse_methods
    from mmtok_cli.synth import generate

    folder = Path(tempfile.mkdtemp(prefix="mmtok-eval-"))
    generate(folder, args.eval_n, seed=2026)
    items, base = load_labelled(folder / "questions.jsonl")
    budgets = [64, 16, 8, 4]

    def run(cache_mb: int, once: bool = True) -> tuple[float, list]:
        engine.set_cache(cache_mb)
        start = time.perf_counter()
        report = evaluate(engine, items, methods=parse_methods(EVAL_METHODS), budgets=budgets, base=base,
                          batch_size=16, max_new_tokens=4, preprocess_once=once)
        return time.perf_counter() - start, [(r["method"], r["tokens"], r["accuracy"]) for r in report["results"]]

    # on = the faster side (cache on / preprocessing once), off = the other
    sides = {"on": (args.cache_mb, True), "off": (args.cache_mb, False) if args.eval_preprocess else (0, True)}
    # A warm-up on a few items (every method, one budget), so that neither side pays the first passes' start-up.
    evaluate(engine, items[:16], methods=parse_methods(EVAL_METHODS), budgets=budgets[-1:], base=base, batch_size=16,
             max_new_tokens=4)
    walls: dict[str, list[float]] = {"on": [], "off": []}
    tables = {}
    for _ in range(args.eval_repeats):
        for mode in ("on", "off"):
            wall, table = run(*sides[mode])
            walls[mode].append(wall)
            tables[mode] = table
    what = "preprocessing once and every row" if args.eval_preprocess else "the cache on and off"
    if tables["on"] != tables["off"]:
        raise RuntimeError(f"the eval table differs with {what}")
    on, off = statistics.median(walls["on"]), statistics.median(walls["off"])
    return {"items": len(items), "configurations": len(tables["on"]), "methods": EVAL_METHODS, "tokens": budgets,
            "compared": "preprocess once (on) / every row (off), cache on" if args.eval_preprocess else
            "cache on / off",
            "wall_s": {"on": round(on, 2), "off": round(off, 2), "on_runs": walls["on"], "off_runs": walls["off"]},
            "speedup": round(off / on, 3), "tables_identical": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=None, help="a `mmtok profile --arch` preset (default cpu-small without "
                        "--model)")
    parser.add_argument("--model", default=None, help="a checkpoint instead of --arch (e.g. demo)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-mb", type=int, default=2048)
    parser.add_argument("--eval", action="store_true", help="measure the eval table instead of batch items/s")
    parser.add_argument("--eval-n", type=int, default=50, help="scenes for the eval part (mmtok synth --n)")
    parser.add_argument("--eval-repeats", type=int, default=1)
    parser.add_argument("--eval-preprocess", action="store_true", help="with --eval: compare preprocessing each "
                        "block once for all rows against once per row (cache on both ways) instead of cache on/off")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.arch is None and args.model is None:
        args.arch = "cpu-small"

    engine = _engine(args)
    part = eval_part(args, engine) if args.eval else batch_part(args, engine)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "transformers": transformers.__version__, "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."), "model": args.arch or args.model,
        "eval" if args.eval else "batch": part,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
