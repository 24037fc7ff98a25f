"""`mmtok eval` on POPE's official files: read as they are with --images, one POPE block per file."""

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.synth import POPE_SETTINGS, generate

from .device import TEST_DEVICE

runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 2, seed=0)
    return folder


def test_synth_writes_official_pope_lines(synth):
    ours = [json.loads(x) for x in (synth / "questions.jsonl").read_text().splitlines()]
    for setting in POPE_SETTINGS:
        lines = [json.loads(x) for x in (synth / f"pope_{setting}.json").read_text().splitlines()]
        assert [list(x) for x in lines] == [["question_id", "image", "text", "label"]] * len(lines)
        mine = [q for q in ours if q["type"] == f"pope-{setting}"]
        assert [(x["image"], x["text"], x["label"]) for x in lines] == [
            (q["image"].split("/")[-1], q["question"], q["answer"]) for q in mine]
        assert [x["question_id"] for x in lines] == list(range(1, len(lines) + 1))


def _confusion(rows):
    """POPE's numbers from the prediction records, counted by hand (the reference for metrics.pope)."""
    said = ["yes" if (r["prediction"] or "").strip().lower().startswith("yes") else "no" for r in rows]
    c = Counter((s, r["answer"]) for s, r in zip(said, rows))
    tp, fp, fn, tn = c["yes", "yes"], c["yes", "no"], c["no", "yes"], c["no", "no"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": (tp + tn) / len(rows), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": said.count("yes") / len(rows)}


def test_several_pope_files_one_block_each(tiny_llava, synth, tmp_path):
    files = [synth / "pope_random.json", synth / "pope_adversarial.json"]
    out, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    result = runner.invoke(app, [
        "eval", *map(str, files), "--images", str(synth / "images"), "--model", str(tiny_llava),
        "--device", TEST_DEVICE,
        "--tokens", "4", "--methods", "mmtok", "--max-new-tokens", "2", "--json", str(out), "--predictions", str(preds),
    ])
    assert result.exit_code == 0, result.output
    assert all(f.name in result.stdout for f in files) and "precision" in result.stdout and "recall" in result.stdout
    report = json.loads(out.read_text())
    assert report["model"] == str(tiny_llava) and [r["data"] for r in report["files"]] == list(map(str, files))
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    for f, part in zip(files, report["files"]):
        labels = [json.loads(x) for x in f.read_text().splitlines()]
        assert part["items"] == len(labels) and part["metric"] == "f1"
        assert [(r["method"], r["tokens"]) for r in part["results"]] == [("full", "full"), ("mmtok", 4)]
        for r in part["results"]:
            mine = [p for p in rows
                    if p["data"] == str(f) and (p["method"], p["tokens"]) == (r["method"], r["tokens"])]
            # read as they are: question_id is the id, text the question, label the answer
            assert [(p["id"], p["question"], p["answer"]) for p in mine] == [
                (x["question_id"], x["text"], x["label"]) for x in labels]
            assert r["pope"] == pytest.approx(_confusion(mine), abs=1e-4) and r["failed"] == 0


def test_missing_image_fails_the_item_with_its_error(tiny_llava, synth, tmp_path):
    lines = [json.loads(x) for x in (synth / "pope_random.json").read_text().splitlines()][:2]
    lines[1]["image"] = "COCO_val2014_000000310196.jpg"
    data = tmp_path / "pope.json"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    result = runner.invoke(app, [
        "eval", str(data), "--images", str(synth / "images"), "--model", str(tiny_llava), "--device", TEST_DEVICE,
        "--methods", "full", "--max-new-tokens", "1", "--json", str(out), "--predictions", str(preds),
    ])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert rows[0]["error"] is None and rows[0]["prediction"] is not None
    assert rows[1]["prediction"] is None and rows[1]["correct"] is False
    assert "image not found: COCO_val2014_000000310196.jpg" in rows[1]["error"]
    assert json.loads(out.read_text())["results"][0]["failed"] == 1


@pytest.mark.parametrize("lines, images, message", [
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"},
      {"question_id": 2, "image": "a.jpg", "text": "Is there a dog in the image?"}], True, "line 2 has no 'label'"),
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}], False,
     "POPE's format"),
    ([{"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}], "missing",
     "is not a folder"),
])
def test_pope_input_errors_are_one_line(tmp_path, lines, images, message):
    data = tmp_path / "pope.json"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    folder = {True: ["--images", str(tmp_path)], False: [], "missing": ["--images", str(tmp_path / "nope")]}[images]
    result = runner.invoke(app, ["eval", str(data), *folder, "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
