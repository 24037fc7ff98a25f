"""`--post-prompt`: an instruction the model reads after every question (eval, batch, config, Engine), left out
of the words the selection covers. lmms-eval's side (answer for answer the same as `mmtok eval --post-prompt`)
is in test_lmms.py."""

import json

import pytest
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.io import load_image
from mmtok_cli.text import question_words, with_post_prompt

from .conftest import noise_image

runner = CliRunner()
POPE = "Answer the question using a single word or phrase."  # lmms-eval's pope task's post-prompt
CUSTOM = "Reply with yes or no, then name the colour."  # in no list of known instructions
QUESTIONS = ["Is there a red square in the image?", "What colour is the circle?"]
TOKENS = "4"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("post-prompt")
    for i in range(2):
        noise_image(40 + i).save(folder / f"img{i}.png")
    lines = [{"image": f"img{i}.png", "question": q, "answer": "yes"} for i, q in enumerate(QUESTIONS)]
    (folder / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_the_selection_covers_the_question_not_the_post_prompt():
    question = "Is there a cat on the red sofa?"
    assert with_post_prompt(question, CUSTOM) == f"{question}\n{CUSTOM}"
    assert with_post_prompt(question, None) == question
    assert question_words(question, post_prompt=CUSTOM) == question_words(question) == ["there", "cat", "on", "red",
                                                                                       "sofa"]
    # `all` is every word the model reads, as an lmms-eval task's prompt holds the post-prompt too
    assert question_words(question, "all", post_prompt=POPE) == question_words(f"{question}\n{POPE}", "all")
    assert question_words(question, "all", post_prompt=POPE)[-1] == "phrase."


def _batch(data, model, *args):
    result = runner.invoke(app, ["batch", str(data / "data.jsonl"), "--model", str(model), "--tokens", TOKENS,
                                 "--max-new-tokens", "3", "--batch-size", "2", *map(str, args)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_batch_asks_each_question_with_the_post_prompt(data, tiny_llava, engine, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"post_prompt: {POPE}\n")  # the config key
    got = _batch(data, tiny_llava, "--config", config)
    for rec, question in zip(got, QUESTIONS):
        picture = load_image(str(data / rec["image"]))
        # the independent reference: the instruction written into the question by hand (known to text.py, so
        # the selection leaves it out both ways)
        ref = engine.ask(picture, f"{question}\n{POPE}", tokens=int(TOKENS), max_new_tokens=3)
        plain = engine.ask(picture, question, tokens=int(TOKENS), max_new_tokens=3)
        assert rec["question"] == question and rec["post_prompt"] == POPE and rec["answer"] == ref.answer
        assert rec["prompt_tokens"]["unpruned"] == ref.prompt_unpruned > plain.prompt_unpruned


def test_a_post_prompt_is_read_but_not_covered(data, tiny_llava, engine):
    got = _batch(data, tiny_llava, "--post-prompt", CUSTOM, "--method", "text")
    for rec, question in zip(got, QUESTIONS):
        picture = load_image(str(data / rec["image"]))
        options = {"tokens": int(TOKENS), "max_new_tokens": 3, "method": "text"}
        read = engine.ask(picture, f"{question}\n{CUSTOM}", **options)  # reads it and covers its words
        alone = engine.ask(picture, question, **options)  # covers the question's words only
        direct = engine.ask(picture, question, post_prompt=CUSTOM, **options)
        assert rec["prompt_tokens"]["unpruned"] == read.prompt_unpruned == direct.prompt_unpruned
        assert rec["answer"] == direct.answer
        assert direct.kept_indices == alone.kept_indices != read.kept_indices


def test_eval_reports_its_post_prompt(data, tiny_llava, engine, tmp_path):
    report, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    result = runner.invoke(app, [
        "eval", str(data / "data.jsonl"), "--model", str(tiny_llava), "--tokens", TOKENS,
        "--methods", "full", "--max-new-tokens", "3", "--post-prompt", POPE, "--json", str(report),
        "--predictions", str(preds),
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["post_prompt"] == POPE
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    for row, question in zip(rows, QUESTIONS):
        picture = load_image(str(data / f"img{QUESTIONS.index(question)}.png"))
        ref = engine.ask(picture, f"{question}\n{POPE}", method="full", max_new_tokens=3)
        assert (row["question"], row["prediction"]) == (question, ref.answer)


@pytest.mark.parametrize("command", ["batch", "eval"])
def test_an_empty_post_prompt_is_a_usage_error(tmp_path, command):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"image": "x.png", "question": "q", "answer": "a"}) + "\n")
    result = runner.invoke(app, [command, str(data), "--post-prompt", " ", "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2, result.output
    assert "--post-prompt is empty" in result.output and len(result.output.strip().splitlines()) == 1
