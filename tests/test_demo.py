"""The shipped demo model: `--model demo` finds it, it really answers synth questions, and its
training script still runs end to end."""

import json

from typer.testing import CliRunner

from mmtok_cli import demo
from mmtok_cli.cli import app
from mmtok_cli.metrics import is_correct
from mmtok_cli.synth import draw, make_scenes, questions

from .device import TEST_DEVICE

runner = CliRunner()
# Never used by training (seeds >= 10**6) nor by other tests.
FRESH_SEED = 777


def test_missing_demo_checkpoint_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "CHECKPOINT", tmp_path / "gone")
    result = runner.invoke(app, ["ask", "sample_images/scene.png", "Is there a red circle?", "--model", "demo"])
    assert result.exit_code == 1
    assert "demo checkpoint is missing" in result.output and "mmtok_cli.demo.train" in result.output
    assert "Traceback" not in result.output


def test_demo_name_finds_the_packaged_checkpoint():
    from mmtok_cli.models.llava import LlavaAdapter
    from mmtok_cli.models.registry import check_model

    assert (demo.CHECKPOINT / "config.json").is_file()
    assert check_model("demo") is LlavaAdapter


def test_demo_answers_fresh_scenes_at_full_tokens():
    from mmtok_cli.engine import Engine

    scenes = make_scenes(8, FRESH_SEED)
    items = questions(scenes, FRESH_SEED)
    images = {s.image: draw(s) for s in scenes}
    answers = Engine("demo", device=TEST_DEVICE, dtype="float32").run(
        [images[it["image"]] for it in items], [it["question"] for it in items], tokens=10**6, max_new_tokens=4
    )
    wrong = [(it["question"], it["answer"], a.answer) for a, it in zip(answers, items)
             if not is_correct(a.answer, it["answer"], it["question"])]
    assert len(wrong) <= 0.05 * len(items), wrong


def test_readme_command_answers_yes():
    def ask(method):
        result = runner.invoke(app, ["ask", "sample_images/scene.png", "Is there a red circle?", "--model", "demo",
                                     "--tokens", "8", "--device", TEST_DEVICE, "--json", "--method", method])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    record = ask("mmtok")
    assert record["answer"].lower() == "yes" and record["vision_tokens"] == {"total": 144, "kept": 8, "cached": False}
    # what README says next to the command: 8 random or evenly spaced tokens miss the circles
    assert ask("random")["answer"].lower() == ask("uniform")["answer"].lower() == "no"


def test_training_script_runs_every_stage_and_resumes(tmp_path):
    from mmtok_cli.demo import train
    from mmtok_cli.engine import Engine

    train.main(["--out", str(tmp_path / "ckpt"), "--steps", "1,1,0", "--batch-size", "2"])
    train.main(["--out", str(tmp_path / "ckpt"), "--steps", "0,0,1", "--batch-size", "2",
                "--init", str(tmp_path / "ckpt" / "stages" / "align")])
    log = json.loads((tmp_path / "ckpt" / "training.json").read_text())
    assert [s["stage"] for s in log["stages"]] == ["text", "align", "instruct"]  # the earlier run's stages carried
    answer = Engine(str(tmp_path / "ckpt"), device=TEST_DEVICE, dtype="float32").run(
        [draw(make_scenes(1, FRESH_SEED)[0])], ["Is there a red circle?"], tokens=8, max_new_tokens=2
    )[0]
    assert answer.vision_total == 144 and answer.vision_kept == 8
