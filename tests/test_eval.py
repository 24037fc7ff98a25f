"""`mmtok eval` end to end on the tiny LLaVA over a small synthetic set."""

import json

import pytest
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.metrics import normalize
from mmtok_cli.synth import generate

from .conftest import noise_image
from .device import TEST_DEVICE

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    generate(folder, 3, seed=0)
    return folder / "questions.jsonl"


@pytest.fixture(scope="module")
def mixed_set(engine, tmp_path_factory):
    """Noise images, each with yes/no questions and an open question whose label is full's own answer (from the
    engine, outside `eval`): full gets the open questions right and pruned rows mostly do not, so the rows'
    accuracies differ and a retention below 1 has something to be wrong about."""
    folder = tmp_path_factory.mktemp("mixed")
    images = [noise_image(20 + i) for i in range(4)]
    for i, image in enumerate(images):
        image.save(folder / f"{i}.png")
    open_question = "What is in the picture?"
    full = engine.run(images, [open_question] * len(images), method="full", max_new_tokens=2)
    lines = []
    for i, got in enumerate(full):
        assert normalize(got.answer), got.answer  # a label must have words to match
        lines += [
            {"id": f"{i}-yes", "image": f"{i}.png", "question": "Is there a cat in the image?", "answer": "yes"},
            {"id": f"{i}-no", "image": f"{i}.png", "question": "Is there a dog in the image?", "answer": "no"},
            {"id": f"{i}-open", "image": f"{i}.png", "question": open_question, "answer": got.answer},
        ]
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_eval_table_json_predictions_and_plot(tiny_llava, mixed_set, tmp_path):
    out, preds, plot = tmp_path / "eval.json", tmp_path / "preds.jsonl", tmp_path / "eval.png"
    methods = ("mmtok", "random", "uniform", "vision", "text", "divprune")
    result = runner.invoke(app, [
        "eval", str(mixed_set), "--model", str(tiny_llava), "--device", TEST_DEVICE, "--tokens", "8,2",
        "--methods", ",".join(methods), "--max-new-tokens", "2", "--batch-size", "4",
        "--json", str(out), "--predictions", str(preds), "--plot", str(plot),
    ])
    assert result.exit_code == 0, result.output
    assert "retention" in result.stdout and "divprune" in result.stdout
    report = json.loads(out.read_text())
    labelled = [json.loads(x) for x in mixed_set.read_text().splitlines()]
    items = len(labelled)
    assert report["model"] == str(tiny_llava) and report["data"] == str(mixed_set) and report["items"] == items
    assert report["metric"] == "accuracy"  # open questions among the yes/no ones
    rows = report["results"]
    assert [(r["method"], r["tokens"]) for r in rows] == [("full", "full")] + [(m, k) for m in methods for k in (8, 2)]
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == items * len(rows)
    assert {"method", "tokens", "id", "answer", "prediction", "correct"} <= set(lines[0])
    # Every headline number, recounted from the predictions file the same run wrote.
    full_accuracy = None
    for r in rows:
        assert {"method", "tokens", "accuracy", "f1", "retention", "mean_kept", "items_per_s"} <= set(r)
        assert r["failed"] == 0 and r["mean_kept"] == (64 if r["method"] == "full" else r["tokens"])
        mine = [x for x in lines if (x["method"], x["tokens"]) == (r["method"], r["tokens"])]
        assert [x["id"] for x in mine] == [x["id"] for x in labelled]
        accuracy = sum(x["correct"] for x in mine) / items
        full_accuracy = accuracy if full_accuracy is None else full_accuracy
        assert r["accuracy"] == round(accuracy, 4)
        assert r["retention"] == round(accuracy / full_accuracy, 4)
        yes_no = [(x["prediction"].strip().lower().startswith("yes"), x["answer"] == "yes") for x in mine
                  if x["answer"] in ("yes", "no")]
        tp = sum(said and truth for said, truth in yes_no)
        said_yes, truly_yes = sum(said for said, _ in yes_no), sum(truth for _, truth in yes_no)
        assert r["f1"] == (round(2 * tp / (said_yes + truly_yes), 4) if tp else 0.0)
    # full answers the open questions as the engine did when labelling them
    assert all(x["correct"] for x in lines if x["method"] == "full" and x["id"].endswith("-open"))
    assert full_accuracy > 0 and any(r["retention"] < 1 for r in rows[1:])  # the recount above had work to do
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_selection_parameters_are_used_and_reported(tiny_llava, synth_set, tmp_path):
    def run(*extra):
        out, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
        result = runner.invoke(app, [
            "eval", str(synth_set), "--model", str(tiny_llava), "--device", TEST_DEVICE, "--tokens", "4",
            "--methods", "mmtok,text", "--max-new-tokens", "2", "--json", str(out), "--predictions", str(preds),
            *extra,
        ])
        assert result.exit_code == 0, result.output
        rows = [json.loads(x) for x in preds.read_text().splitlines()]
        return json.loads(out.read_text())["selection"], {
            m: [r["prediction"] for r in rows if r["method"] == m] for m in ("mmtok", "text")}

    conventions = {"budget": "total", "question_words": "content"}
    used, predictions = run()
    assert used == {"alpha": 0.5, "tau_t": 0.02, "tau_v": 0.2, **conventions}
    used, _ = run("--budget", "per-view", "--question-words", "all")
    assert used == {"alpha": 0.5, "tau_t": 0.02, "tau_v": 0.2, "budget": "per-view", "question_words": "all"}
    used, predictions = run("--alpha", "0", "--tau-t", "0.05")
    assert used == {"alpha": 0.0, "tau_t": 0.05, "tau_v": 0.2, **conventions}
    # with alpha 0, MMTok is the text baseline: the same tokens, so the same answers
    assert predictions["mmtok"] == predictions["text"]


@pytest.mark.parametrize("lines, args, message", [
    ([], [], "no items"),
    ([{"image": "x.png", "question": "Is it?"}], [], "has no 'answer'"),
    ([{"image": "x.png", "question": "Is it?", "answer": "yes"}], ["--methods", "best"], "unknown method 'best'"),
    ([{"image": "x.png", "question": "Is it?", "answer": "yes"}], ["--tokens", "8,x"], "--tokens must be"),
])
def test_bad_input_is_one_line(tmp_path, lines, args, message):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = runner.invoke(app, ["eval", str(data), "--model", str(tmp_path / "no-model"), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_eval_preprocesses_each_block_once_for_all_rows(tiny_llava, synth_set, tmp_path, monkeypatch):
    """The processor runs as often for a table of seven rows as for full alone, and every row answers what
    `mmtok batch` answers with that method and budget."""
    from mmtok_cli.engine import Engine

    calls = []
    prepare = Engine.prepare
    monkeypatch.setattr(Engine, "prepare", lambda self, images, *a, **k: calls.append(len(images)) or prepare(
        self, images, *a, **k))
    common = [str(synth_set), "--model", str(tiny_llava), "--device", TEST_DEVICE, "--max-new-tokens", "3",
              "--batch-size", "4"]

    def table(methods: str) -> list[dict]:
        calls.clear()
        preds = tmp_path / "preds.jsonl"
        result = runner.invoke(app, ["eval", *common, "--tokens", "8,2", "--methods", methods, "--predictions",
                                     str(preds)])
        assert result.exit_code == 0, result.output
        return [json.loads(x) for x in preds.read_text().splitlines()]

    table("full")
    alone = list(calls)
    rows = table("mmtok,random,divprune")
    items = sum(1 for _ in synth_set.open())
    assert sum(alone) == items and calls == alone  # one preprocessing per chunk, not per row
    for method, tokens in (("random", 2), ("mmtok", 8), ("divprune", 2)):
        result = runner.invoke(app, ["batch", *common, "--method", method, "--tokens", str(tokens)])
        assert result.exit_code == 0, result.output
        want = {r["id"]: r["answer"] for r in map(json.loads, result.stdout.splitlines())}
        got = {r["id"]: r["prediction"] for r in rows if (r["method"], r["tokens"]) == (method, tokens)}
        assert got == want
