"""Throughput of `mmtok batch` at several batch sizes, measured in one run.

    python benchmarks/batch.py --model tiny-llava --items 96 --batch 1,8 --repeats 3

Runs the same JSONL (the sample images, cycled, with a few questions) through `BatchRunner`, the
code behind `mmtok batch`, alternating batch sizes within each repeat so that machine noise hits
all of them alike. Reports median items/s and the share of wall time the model spent waiting on
the background loader (image decoding + preprocessing). Without --model it builds the tiny
random-weight LLaVA checkpoint in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch
import transformers

from mmtok_cli.batch import BatchOptions, BatchRunner
from mmtok_cli.engine import Engine
from mmtok_cli.io import IMAGE_SUFFIXES, read_jsonl

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
QUESTIONS = ["What is in this image?", "Is there a red circle in the picture?", "Describe the photo in detail."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: build the tiny LLaVA)")
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = args.model
    if model is None:
        from mmtok_cli.tiny import build_tiny_llava

        model = str(build_tiny_llava(Path(tempfile.mkdtemp()) / "tiny-llava", seed=0))
    engine = Engine(model, device=args.device, dtype="float32" if args.device == "cpu" else "auto")
    images = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    lines = [json.dumps({"image": images[i % len(images)].name, "question": QUESTIONS[i % len(QUESTIONS)]})
             for i in range(args.items)]
    sizes = [int(b) for b in args.batch.split(",")]
    options = {"tokens": args.tokens, "max_new_tokens": args.max_new_tokens}

    # Warm-up: one small pass per batch size (allocator, first-call kernels, file cache).
    for b in sizes:
        BatchRunner(engine, BatchOptions(batch_size=b, **options), base=SAMPLES).run(read_jsonl(lines[:b]), list)
    rate: dict[int, list[float]] = {b: [] for b in sizes}
    wait: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(args.repeats):
        for b in sizes:
            got: list = []
            summary = BatchRunner(engine, BatchOptions(batch_size=b, **options), base=SAMPLES).run(
                read_jsonl(lines), got.extend)
            assert summary.ok == args.items, summary
            rate[b].append(summary.items_per_s)
            wait[b].append(summary.wait_s / summary.wall_s)

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}")
    print(f"# {args.items} items over {len(images)} sample images, tokens {args.tokens}, "
          f"max_new_tokens {args.max_new_tokens}, {args.repeats} repeats (median, min-max)")
    print("| batch size | items/s | vs batch 1 | waiting on loader |")
    print("| --- | --- | --- | --- |")
    base = statistics.median(rate[sizes[0]])
    for b in sizes:
        r = statistics.median(rate[b])
        print(f"| {b} | {r:.1f} ({min(rate[b]):.1f}-{max(rate[b]):.1f}) | {r / base:.2f}x | "
              f"{100 * statistics.median(wait[b]):.1f}% ({100 * min(wait[b]):.1f}-{100 * max(wait[b]):.1f}%) |")


if __name__ == "__main__":
    main()
