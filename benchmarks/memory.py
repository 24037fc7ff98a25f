"""Peak memory of `mmtok batch` on the largest images it accepts, next to the same run on small images.

    python benchmarks/memory.py [--items 16] [--batch-size 8]

Writes `--items` PNGs just under the decoded-pixel cap (io.MAX_PIXELS, square) and as many 64 x 64 ones,
runs `mmtok batch` on each set in a subprocess with a tiny random-weight LLaVA (the model's own memory
is then negligible), and prints the peak resident set size (getrusage of the child) of both runs and
their difference: what the images in flight cost, and a digest of each run's answers (equal digests from
two versions of mmtok: the same answers). Memory does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from mmtok_cli.io import MAX_PIXELS
from mmtok_cli.tiny import build_tiny_llava


def peak_rss_mb(questions: Path, model: Path, batch_size: int) -> tuple[float, str]:
    """Peak RSS of one `mmtok batch` child process, in MB (a fresh probe process per run, so peaks do not mix), and
    a digest of its answers."""
    answers = questions.with_suffix(".out.jsonl")
    probe = (
        "import resource, subprocess, sys; "
        "subprocess.run([sys.executable, '-m', 'mmtok_cli', 'batch', sys.argv[1], '--model', sys.argv[2], "
        "'--batch-size', sys.argv[3], '--max-new-tokens', '1', '--out', sys.argv[4]], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(questions), str(model), str(batch_size), str(answers)],
                         capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    digest = hashlib.sha256(json.dumps([(r["id"], r["answer"], r["error"]) for r in records]).encode()).hexdigest()
    return int(out.stdout) / 1024, digest[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    side = math.isqrt(MAX_PIXELS)
    with tempfile.TemporaryDirectory(prefix="mmtok-memory-") as folder:
        root = Path(folder)
        model = build_tiny_llava(root / "model")
        runs = {}
        for name, size in (("small", 64), ("largest", side)):
            ramp = Image.linear_gradient("L").resize((size, size))
            Image.merge("RGB", (ramp, ramp.rotate(90), ramp)).save(root / f"{name}.png")
            questions = root / f"{name}.jsonl"
            questions.write_text("".join(json.dumps({"image": f"{name}.png", "question": "What is this?"}) + "\n"
                                         for _ in range(args.items)))
            runs[name] = peak_rss_mb(questions, model, args.batch_size)
    print(f"{args.items} items, batch size {args.batch_size}, images {side} x {side} ({side * side / 1e6:.1f} Mpixel)")
    (small, small_answers), (largest, largest_answers) = runs["small"], runs["largest"]
    print(f"peak RSS: small images {small:.0f} MB, largest accepted {largest:.0f} MB, "
          f"difference {largest - small:.0f} MB")
    print(f"answers: small images {small_answers}, largest accepted {largest_answers}")


if __name__ == "__main__":
    main()
