"""`mmtok synth`: a small labelled data set of coloured shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .common import DebugOpt, err, guarded


def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write images/, questions.jsonl and scenes.json to.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed writes byte-identical files.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into an --out folder that is not empty.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a small labelled data set of coloured shapes: PNG scenes and OUT/questions.jsonl.

    Questions per image: POPE-style yes/no existence questions (random, popular and adversarial
    negatives), "What colour is the square?" / "What shape is the blue object?" (only when
    unambiguous; one-word answers) and "How many circles are there?" (answered as a digit). Each line
    has image (relative to OUT), question, answer, type and id: ready for `mmtok eval` or `mmtok batch`.
    The existence questions are also written in POPE's own format, one file per setting
    (OUT/pope_random.json, pope_popular.json, pope_adversarial.json; images named as in OUT/images).

    Example:

      mmtok synth --out synth --n 100 && mmtok eval synth/questions.jsonl --tokens 64,16,4

      mmtok eval synth/pope_random.json synth/pope_popular.json --images synth/images
    """
    from ..synth import generate

    def work() -> None:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out '{out}' is a file; give a folder")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise UsageError(f"--out '{out}' is not empty; pass --overwrite to write into it anyway")
        generate(out, n, seed)
        lines = sum(1 for _ in (out / "questions.jsonl").open(encoding="utf-8"))
        err.print(f"{n} images and {lines} questions written to {out / 'questions.jsonl'}", highlight=False,
                  markup=False)

    guarded(debug, work)
