import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mmtok_cli.cli import app

from .conftest import noise_image
from .device import TEST_DEVICE

runner = CliRunner()


def ask(*args):
    return runner.invoke(app, ["ask", *map(str, args)])


def test_json_output_has_every_field(tiny_llava, image_file, engine):
    result = ask(image_file, "What colour is the cat?", "--model", tiny_llava, "--tokens", 8, "--json",
                 "--max-new-tokens", 5)
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["model"] == str(tiny_llava) and record["method"] == "mmtok"
    assert record["vision_tokens"] == {"total": 64, "kept": 8, "cached": False}
    (kept,) = record["kept_indices"]
    assert len(kept) == 8 and kept == sorted(set(kept)) and all(0 <= i < 64 for i in kept)
    assert record["prompt_tokens"]["pruned"] == record["prompt_tokens"]["unpruned"] - 56
    assert set(record["timings_ms"]) >= {"vision", "select", "prefill", "decode", "total"}
    assert record["device"] == TEST_DEVICE and record["dtype"] == "float32"
    # the CLI reports exactly what the library computes
    from mmtok_cli.io import load_image

    direct = engine.ask(load_image(str(image_file)), "What colour is the cat?", tokens=8, max_new_tokens=5)
    assert record["answer"] == direct.answer and kept == direct.kept_indices[0]
    assert record["speedup"] == {"estimated": direct.speedup_estimated, "measured": None}
    assert record["speedup"]["estimated"] > 1 and "compare" not in record


def test_compare_runs_unpruned_too(tiny_llava, image_file, engine):
    result = ask(image_file, "What colour is the cat?", "--model", tiny_llava, "--tokens", 8, "--json",
                 "--max-new-tokens", 5, "--compare")
    record = json.loads(result.stdout)
    from mmtok_cli.io import load_image

    full = engine.ask(load_image(str(image_file)), "What colour is the cat?", method="full", max_new_tokens=5)
    assert record["compare"]["answer"] == full.answer
    assert record["compare"]["agree"] == (full.answer == record["answer"])
    assert record["speedup"]["measured"] == pytest.approx(
        record["compare"]["timings_ms"]["total"] / record["timings_ms"]["total"], rel=1e-2)
    human = ask(image_file, "What colour is the cat?", "--model", tiny_llava, "--compare", "--max-new-tokens", 2)
    assert "speedup estimated" in human.stderr and "measured" in human.stderr


def test_human_output_is_answer_then_stats_on_stderr(tiny_llava, image_file):
    result = ask(image_file, "What is here?", "--model", tiny_llava, "-k", 4, "--max-new-tokens", 3)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "vision tokens 4/64 · prompt" in result.stderr and "(was " in result.stderr


def test_full_method_keeps_every_token(tiny_llava, image_file):
    result = ask(image_file, "What is here?", "--model", tiny_llava, "--method", "full", "--json",
                 "--max-new-tokens", 2)
    record = json.loads(result.stdout)
    assert record["vision_tokens"] == {"total": 64, "kept": 64, "cached": False}
    assert record["kept_indices"] == [list(range(64))]
    assert record["speedup"]["estimated"] == 1.0


def test_selection_parameters_reach_the_selection(tiny_llava, image_file, engine):
    from mmtok_cli.io import load_image

    def kept(*extra):
        result = ask(image_file, "What colour is the cat?", "--model", tiny_llava, "--tokens", 8, "--json",
                     "--max-new-tokens", 1, *extra)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["kept_indices"][0]

    # alpha 0 leaves MMTok only its question term P, which is exactly the `text` baseline
    assert kept("--alpha", 0) == kept("--method", "text") != kept()
    direct = engine.ask(load_image(str(image_file)), "What colour is the cat?", tokens=8, max_new_tokens=1,
                        tau_t=0.5, tau_v=0.01)
    assert kept("--tau-t", 0.5, "--tau-v", 0.01) == direct.kept_indices[0] != kept()


@pytest.fixture
def bad_inputs(tmp_path, tiny_llava):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is not a jpeg")
    truncated = tmp_path / "cut.png"
    noise_image(1).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_llava / "config.json").read_text())
    return {"not_image": not_image, "truncated": truncated, "bert": bert, "no_weights": no_weights}


@pytest.mark.parametrize(
    "case,code,message",
    [
        ("missing image", 1, "image not found"),
        ("not an image", 1, "is not an image"),
        ("truncated image", 1, "could not be decoded"),
        ("tokens zero", 2, "--tokens must be at least 1"),
        ("negative tokens", 2, "--tokens must be at least 1"),
        ("empty question", 2, "question is empty"),
        ("unknown method", 2, "unknown --method"),
        ("unknown dtype", 2, "unknown --dtype"),
        ("negative alpha", 2, "--alpha must be a number of at least 0"),
        ("zero tau_t", 2, "--tau-t must be a number above 0"),
        ("infinite tau_v", 2, "--tau-v must be a number above 0"),
        ("missing model folder", 1, "no model folder"),
        ("unsupported architecture", 1, "model type 'bert' is not supported; supported families: llava"),
        ("offline hub id", 1, "--model /path/to/local"),
        ("folder without weights", 1, "could not load model"),
    ],
)
def test_errors_are_one_line_with_exit_status(case, code, message, tiny_llava, image_file, bad_inputs, tmp_path):
    args = {
        "missing image": [tmp_path / "nope.png", "q", "--model", tiny_llava],
        "not an image": [bad_inputs["not_image"], "q", "--model", tiny_llava],
        "truncated image": [bad_inputs["truncated"], "q", "--model", tiny_llava],
        "tokens zero": [image_file, "q", "--tokens", 0],
        "negative tokens": [image_file, "q", "--tokens", -3],
        "empty question": [image_file, "   "],
        "unknown method": [image_file, "q", "--method", "magic"],
        "unknown dtype": [image_file, "q", "--dtype", "float8"],
        "negative alpha": [image_file, "q", "--alpha", -0.5],
        "zero tau_t": [image_file, "q", "--tau-t", 0],
        "infinite tau_v": [image_file, "q", "--tau-v", "inf"],
        "missing model folder": [image_file, "q", "--model", tmp_path / "no-such-model"],
        "unsupported architecture": [image_file, "q", "--model", bad_inputs["bert"]],
        "offline hub id": [image_file, "q", "--model", "someone/not-a-cached-model"],
        "folder without weights": [image_file, "q", "--model", bad_inputs["no_weights"]],
    }[case]
    result = ask(*args)
    assert result.exit_code == code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = ask(tmp_path / "nope.png", "q", "--debug")
    assert result.exit_code == 1
    assert result.exception is not None and "image not found" in str(result.exception)


def test_console_script_pipes_clean_json(tiny_llava, image_file):
    """A real process, as a shell pipeline sees it: stdout is exactly one JSON line."""
    proc = subprocess.run(
        [sys.executable, "-m", "mmtok_cli", "ask", str(image_file), "What is here?", "--model", str(tiny_llava),
         "--tokens", "3", "--json", "--max-new-tokens", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["vision_tokens"]["kept"] == 3


def test_image_from_stdin_and_markup_safe_errors(tiny_llava, image_file, tmp_path):
    result = runner.invoke(app, ["ask", "-", "What is here?", "--model", str(tiny_llava), "--json", "-k", "2",
                                 "--max-new-tokens", "1"], input=image_file.read_bytes())
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["vision_tokens"]["kept"] == 2
    odd = tmp_path / "[bold]no.png"
    result = ask(odd, "q")
    assert result.exit_code == 1 and f"image not found: {odd}" in result.stderr
