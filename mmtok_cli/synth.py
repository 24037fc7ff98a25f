"""`mmtok synth`: small labelled scenes of coloured shapes, with POPE-style and attribute questions.

Every image is a 3 x 3 grid of cells on a light background; 2 to 5 cells hold one object each (a
circle, square or triangle, in one of four colours, small or large), so objects never overlap and
every answer follows from the scene description alone. Questions per image (`type` in brackets):

* existence, POPE-style [pope-random, pope-popular, pope-adversarial]: for each of POPE's three
  negative-sampling settings one "yes" question about a present object and one "no" question about
  an absent one. The absent object is, as POPE builds them, any absent object (random), the absent
  object most frequent in the whole data set (popular), or the absent object that co-occurs most
  with the present ones in the data set, preferring one with a present object's shape in another
  colour (adversarial). An object is a (colour, shape) pair.
* attribute [colour, shape]: "What colour is the square?" only when exactly one square is present,
  "What shape is the blue object?" only when exactly one blue object is; one-word answers.
* counting [count]: "How many circles are there?" for a present shape; the answer is a digit ("2").

Deterministic: the same seed gives byte-identical files (PIL draws without antialiasing and writes
no timestamps into PNGs). PIL only.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .errors import UsageError
from .io import check_output_folder, writing

SIZE = 336
GRID = 3
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
HALF_SIZES = {"small": 22, "large": 46}  # half the object's width in pixels; a cell is 112 px
BACKGROUND = (245, 245, 245)
POPE_SETTINGS = ("random", "popular", "adversarial")
SHORT = " Answer the question using a single word or phrase."
"""LLaVA's instruction for short answers (the question-token filter drops it, see text.py)."""


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    x: int
    """Centre, in pixels."""
    y: int


@dataclass
class Scene:
    image: str
    """Path relative to the output folder."""
    objects: list[Shape]


def make_scenes(n: int, seed: int) -> list[Scene]:
    """`n` random scene descriptions (no drawing)."""
    rng = random.Random(seed)
    cell = SIZE // GRID
    scenes = []
    for i in range(n):
        cells = rng.sample(range(GRID * GRID), rng.randint(2, 5))
        objects = [
            Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(HALF_SIZES)),
                  (c % GRID) * cell + cell // 2, (c // GRID) * cell + cell // 2)
            for c in cells
        ]
        scenes.append(Scene(f"images/{i:04d}.png", objects))
    return scenes


def draw(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for o in scene.objects:
        h, fill = HALF_SIZES[o.size], COLOURS[o.colour]
        box = (o.x - h, o.y - h, o.x + h, o.y + h)
        if o.shape == "circle":
            pen.ellipse(box, fill=fill)
        elif o.shape == "square":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(o.x, o.y - h), (o.x - h, o.y + h), (o.x + h, o.y + h)], fill=fill)
    return image


def _plural(shape: str) -> str:
    return f"{shape}s"


def questions(scenes: list[Scene], seed: int) -> list[dict[str, Any]]:
    """The labelled question records for `scenes` (batch input lines plus `answer`, `type`, `id`)."""
    rng = random.Random(seed + 1)  # its own stream: adding a question kind must not change the scenes
    objects = [(c, s) for s in SHAPES for c in COLOURS]
    present = [{(o.colour, o.shape) for o in sc.objects} for sc in scenes]
    frequency = Counter(obj for p in present for obj in p)
    together: Counter = Counter((a, b) for p in present for a in p for b in p if a != b)
    out: list[dict[str, Any]] = []
    for i, (scene, here) in enumerate(zip(scenes, present)):
        qs: list[tuple[str, str, str]] = []
        absent = [o for o in objects if o not in here]
        here_sorted = sorted(here)
        adversarial_pool = [o for o in absent if any(o[1] == p[1] for p in here)] or absent
        negatives = {
            "random": rng.choice(absent),
            # Ties go to the fixed object order, so the choice is deterministic.
            "popular": max(absent, key=lambda o: frequency[o]),
            "adversarial": max(adversarial_pool, key=lambda o: sum(together[(o, p)] for p in here)),
        }
        for setting, negative in negatives.items():
            colour, shape = rng.choice(here_sorted)
            qs.append((f"Is there a {colour} {shape} in the image?", "yes", f"pope-{setting}"))
            qs.append((f"Is there a {negative[0]} {negative[1]} in the image?", "no", f"pope-{setting}"))
        shapes = Counter(o.shape for o in scene.objects)
        colours = Counter(o.colour for o in scene.objects)
        unique_shapes = [s for s in SHAPES if shapes[s] == 1]
        if unique_shapes:
            shape = rng.choice(unique_shapes)
            colour = next(o.colour for o in scene.objects if o.shape == shape)
            qs.append((f"What colour is the {shape}?{SHORT}", colour, "colour"))
        unique_colours = [c for c in COLOURS if colours[c] == 1]
        if unique_colours:
            colour = rng.choice(unique_colours)
            shape = next(o.shape for o in scene.objects if o.colour == colour)
            qs.append((f"What shape is the {colour} object?{SHORT}", shape, "shape"))
        shape = rng.choice(sorted(shapes))
        qs.append((f"How many {_plural(shape)} are there?{SHORT}", str(shapes[shape]), "count"))
        for j, (question, answer, kind) in enumerate(qs):
            out.append({"id": f"{i:04d}-{j}", "image": scene.image, "question": question, "answer": answer,
                        "type": kind})
    return out


def write_pope_files(folder: Path, records: list[dict[str, Any]]) -> None:
    """The existence questions as POPE's official files (OUT/pope_random.json, ...): one JSON object a line with
    question_id, image (a bare file name in OUT/images, as POPE names COCO files), text and label."""
    for setting in POPE_SETTINGS:
        mine = [r for r in records if r["type"] == f"pope-{setting}"]
        with (folder / f"pope_{setting}.json").open("w", encoding="utf-8", newline="\n") as fp:
            for number, r in enumerate(mine, start=1):
                line = {"question_id": number, "image": Path(r["image"]).name, "text": r["question"],
                        "label": r["answer"]}
                fp.write(json.dumps(line) + "\n")


def generate(out: str | Path, n: int, seed: int = 0) -> list[Scene]:
    """Write `n` scenes as PNGs under OUT/images/, their questions to OUT/questions.jsonl and the existence
    questions again in POPE's own format (`write_pope_files`).

    Returns the scene descriptions (what the answers are derived from).
    """
    if n < 1:
        raise UsageError(f"--n must be at least 1 (got {n})")
    folder = check_output_folder(out, "--out")
    scenes = make_scenes(n, seed)
    with writing(folder, "--out"):
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for scene in scenes:
            draw(scene).save(folder / scene.image, format="PNG")
        with (folder / "questions.jsonl").open("w", encoding="utf-8", newline="\n") as fp:
            records = questions(scenes, seed)
            for rec in records:
                fp.write(json.dumps(rec) + "\n")
        write_pope_files(folder, records)
        (folder / "scenes.json").write_text(
            json.dumps([{"image": s.image, "objects": [asdict(o) for o in s.objects]} for s in scenes]) + "\n",
            encoding="utf-8",
        )
    return scenes
