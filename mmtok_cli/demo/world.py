"""The demo model's training text about `mmtok synth` scenes: captions and question-answer turns.

The questions cover every kind `mmtok synth` asks (in its exact wording) plus a few everyday
rephrasings ("Is there a red circle?"), so the demo answers both the generated data and a person.
"""

from __future__ import annotations

import random
from collections import Counter

from ..synth import COLOURS, GRID, SHAPES, SHORT, SIZE, Scene, Shape

WHERE = ("at the top left", "at the top", "at the top right", "on the left", "in the centre", "on the right",
         "at the bottom left", "at the bottom", "at the bottom right")
DESCRIBE = ("Describe the image.", "What is in the image?", "What do you see?")
EXISTS = ("Is there a {c} {s} in the image?", "Is there a {c} {s}?", "Is there a {c} {s} in this picture?")
COUNT = ("How many {p} are there?", "How many {p} are in the image?")


def cell(shape: Shape) -> int:
    """The 3 x 3 grid cell (row-major) an object sits in."""
    step = SIZE // GRID
    return (shape.y // step) * GRID + shape.x // step


def caption(scene: Scene) -> str:
    """Every object, in reading order: 'a small red circle at the top left , a large ... .'"""
    parts = [f"a {o.size} {o.colour} {o.shape} {WHERE[cell(o)]}" for o in sorted(scene.objects, key=cell)]
    return " , ".join(parts) + " ."


def _short(question: str, rng: random.Random) -> str:
    """Half the short-answer questions carry LLaVA's format instruction, as benchmark data does."""
    return question + SHORT if rng.random() < 0.5 else question


def turns(scene: Scene, rng: random.Random, *, describe: float = 0.0) -> list[tuple[str, str]]:
    """Shuffled (question, answer) turns about `scene`: balanced yes/no existence questions (absent
    objects drawn at random and as POPE's adversarial near misses: a present shape in another colour,
    a present colour in another shape), colour and shape of unique objects, counts (absent shapes
    too, answer 0); with probability `describe`, also the caption."""
    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [(c, s) for s in SHAPES for c in COLOURS if (c, s) not in present]
    near = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)] or absent
    out: list[tuple[str, str]] = []
    for obj in rng.sample(sorted(present), min(3, len(present))):
        out.append((rng.choice(EXISTS).format(c=obj[0], s=obj[1]), "yes"))
    yes = len(out)
    for pool in (absent, near, near)[:yes]:
        c, s = rng.choice(pool)
        out.append((rng.choice(EXISTS).format(c=c, s=s), "no"))
    shapes = Counter(o.shape for o in scene.objects)
    colours = Counter(o.colour for o in scene.objects)
    for o in scene.objects:
        if shapes[o.shape] == 1:
            out.append((_short(f"What colour is the {o.shape}?", rng), o.colour))
        if colours[o.colour] == 1:
            out.append((_short(f"What shape is the {o.colour} object?", rng), o.shape))
    for s in SHAPES:
        if shapes[s] or rng.random() < 0.3:
            out.append((_short(rng.choice(COUNT).format(p=f"{s}s"), rng), str(shapes[s])))
    if rng.random() < describe:
        out.append((rng.choice(DESCRIBE), caption(scene)))
    rng.shuffle(out)
    return out


def corpus() -> str:
    """Text covering the world's vocabulary, for training the tokenizer."""
    lines = [" ".join(WHERE), " ".join(DESCRIBE), SHORT, " ".join(SHAPES), " ".join(f"{s}s" for s in SHAPES),
             " ".join(COLOURS), "small large yes no 0 1 2 3 4 5 6 7 8 9 , ."]
    lines += [q.format(c=c, s=s, p=f"{s}s") for q in EXISTS + COUNT for c in COLOURS for s in SHAPES]
    lines += [f"What colour is the {s}? What shape is the {c} object?" for c in COLOURS for s in SHAPES]
    return "\n".join(lines)
