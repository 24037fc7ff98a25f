"""`mmtok synth`: byte-identical by seed, and every answer follows from the scene (and its pixels)."""

import hashlib
import json
from collections import Counter

from mmtok_cli.synth import COLOURS, generate


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_files(tmp_path):
    generate(tmp_path / "a", 6, seed=3)
    generate(tmp_path / "b", 6, seed=3)
    generate(tmp_path / "c", 6, seed=4)
    a = _digest(tmp_path / "a")
    assert a == _digest(tmp_path / "b")
    assert a["questions.jsonl"] != _digest(tmp_path / "c")["questions.jsonl"]
    assert len([k for k in a if k.endswith(".png")]) == 6


def test_answers_follow_from_the_scene_and_the_pixels(tmp_path):
    from PIL import Image

    scenes = {s.image: s for s in generate(tmp_path, 12, seed=0)}
    lines = [json.loads(x) for x in (tmp_path / "questions.jsonl").read_text().splitlines()]
    kinds = Counter(r["type"] for r in lines)
    assert {"pope-random", "pope-popular", "pope-adversarial", "colour", "shape", "count"} <= set(kinds)
    for r in lines:
        assert set(r) == {"id", "image", "question", "answer", "type"} and (tmp_path / r["image"]).is_file()
        objects = scenes[r["image"]].objects
        words = r["question"].rstrip("?").split("?")[0].split()
        if r["type"].startswith("pope"):
            colour, shape = words[3], words[4]
            present = any(o.colour == colour and o.shape == shape for o in objects)
            assert r["answer"] == ("yes" if present else "no")
            here = {(o.colour, o.shape) for o in objects}
            if r["type"] == "pope-adversarial" and r["answer"] == "no" and any(
                (c, o.shape) not in here for o in objects for c in COLOURS
            ):
                assert shape in {o.shape for o in objects}  # a present shape in another colour
        elif r["type"] == "colour":
            shape = words[-1]
            (only,) = [o for o in objects if o.shape == shape]  # asked only when unambiguous
            assert r["answer"] == only.colour
        elif r["type"] == "shape":
            colour = words[-2]
            (only,) = [o for o in objects if o.colour == colour]
            assert r["answer"] == only.shape
        else:
            shape = words[2].removesuffix("s")
            assert r["answer"] == str(sum(o.shape == shape for o in objects))
    # POPE balance: every setting has as many yes as no.
    for setting in ("random", "popular", "adversarial"):
        answers = Counter(r["answer"] for r in lines if r["type"] == f"pope-{setting}")
        assert answers["yes"] == answers["no"] == 12
    # Pixels: each object's centre has its colour.
    for scene in scenes.values():
        image = Image.open(tmp_path / scene.image).convert("RGB")
        for o in scene.objects:
            assert image.getpixel((o.x, o.y)) == COLOURS[o.colour]


def test_cli_writes_the_set_and_refuses_zero(tmp_path):
    from typer.testing import CliRunner

    from mmtok_cli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--n", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "questions.jsonl").is_file() and "2 images" in result.output
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "t"), "--n", "0"])
    assert bad.exit_code == 2 and "--n must be at least 1" in bad.output
