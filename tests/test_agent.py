"""The agent (--agent): a first pass whose preliminary answer's words join T, then selection and the answer.

Everything runs real tiny models; the only spies record what the adapter is handed (they call through).
"""

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.engine import Engine
from mmtok_cli.options import AGENT_MAX_NEW_TOKENS
from mmtok_cli.selection import ALPHA, TAU_V
from mmtok_cli.text import answer_words, content_token_ids

from .checks import ROUNDING_MS, StageClocks
from .conftest import noise_image
from .device import TEST_DEVICE
from .test_batch import records, write_jsonl

runner = CliRunner()
QUESTIONS = ["What colour is the cat?", "how many cats are on the sofa ?", "Is there a red circle?"]
SIZES = [(160, 120), (90, 200), (112, 112)]


@pytest.fixture(scope="module")
def pictures():
    return [noise_image(20 + i, size) for i, size in enumerate(SIZES)]


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A second, different family as the agent model: it reads the images through its own processor."""
    from mmtok_cli.tiny import build_tiny_qwen_vl

    return build_tiny_qwen_vl(tmp_path_factory.mktemp("agent") / "tiny-qwen", seed=3)


@pytest.fixture(scope="module")
def qwen_engine(tiny_qwen):
    return Engine(str(tiny_qwen), device=TEST_DEVICE, dtype="float32")


@pytest.fixture(scope="module")
def two_model_engine(tiny_llava, qwen_engine):
    return Engine(str(tiny_llava), device=TEST_DEVICE, dtype="float32", agent_model=qwen_engine)


def spy(monkeypatch, adapter, name):
    """Record the arguments of `adapter.<name>` while calling the real method."""
    calls = []
    real = getattr(adapter, name)

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(adapter, name, record)
    return calls


def extended_text(engine, questions, agent_answers):
    """T built by hand from the question's content words followed by the agent answer's words."""
    adapter = engine.adapter
    ids = [content_token_ids(q, adapter.tokenizer, agent_answer=a) for q, a in zip(questions, agent_answers)]
    m = max(len(i) for i in ids)
    padded = torch.zeros(len(ids), m, dtype=torch.long, device=engine.device)
    mask = torch.zeros(len(ids), m, dtype=torch.bool, device=engine.device)
    for row, row_ids in enumerate(ids):
        padded[row, : len(row_ids)] = torch.tensor(row_ids)
        mask[row, : len(row_ids)] = True
    with torch.inference_mode():
        return adapter.model.get_input_embeddings()(padded), mask, ids


def test_answer_words_drop_stop_words_without_fallback(engine):
    assert answer_words("A red cat, sitting on the sofa.") == ["red", "cat", "sitting", "on", "sofa"]
    assert answer_words("It is.") == []  # an answer of stop words adds nothing (no fall back to all words)
    tok = engine.adapter.tokenizer
    plain = content_token_ids("What colour is the cat?", tok)
    both = content_token_ids("What colour is the cat?", tok, agent_answer="The red cat.")
    assert both == plain + tok(["red", "cat"], is_split_into_words=True, add_special_tokens=False)["input_ids"]


def test_agent_words_reach_the_selection_and_vision_is_encoded_once(engine, pictures, monkeypatch):
    plain = engine.run(pictures, QUESTIONS, tokens=8, max_new_tokens=4)
    engine.cache.clear()  # the run above filled it: the agent's run must encode the images itself, once
    encodes = spy(monkeypatch, engine.adapter, "encode")
    selects = spy(monkeypatch, engine.adapter, "select")
    answers = engine.run(pictures, QUESTIONS, tokens=8, max_new_tokens=4, agent=True)

    assert len(encodes) == 1  # the first pass reuses the vision tokens the second pass selects from
    assert len(selects) == 2  # the first pass (question only), then again with the agent's words
    agent_answers = [a.agent_answer for a in answers]
    assert all(answer_words(a) for a in agent_answers), agent_answers  # random words, but words

    (vt, first_text, first_mask, budgets), _ = selects[0]
    question_only, question_mask = engine.adapter.text_tokens(QUESTIONS)
    assert torch.equal(first_text, question_only) and torch.equal(first_mask, question_mask)

    (vt, text, mask, budgets), params = selects[1]
    want, want_mask, ids = extended_text(engine, QUESTIONS, agent_answers)
    assert torch.equal(mask, want_mask) and torch.equal(text, want)
    tok = engine.adapter.tokenizer
    for row, agent_answer in enumerate(agent_answers):
        words = tok(answer_words(agent_answer), is_split_into_words=True, add_special_tokens=False)["input_ids"]
        assert ids[row][-len(words):] == words  # the answer's tokens follow the question's

    # The answer's kept tokens are those a selection with the extended T picks, and differ from the plain ones.
    assert budgets == [8] * 3 and params["method"] == "mmtok"
    with torch.inference_mode():
        expected = engine.adapter.select(vt, want, want_mask, budgets, **params).indices
    assert [a.kept_indices[0] for a in answers] == [k.tolist() for k in expected]
    assert [a.kept_indices for a in answers] != [a.kept_indices for a in plain]
    # The agent only changes T: the prompt has the same length, never the preliminary answer.
    assert [(a.prompt_unpruned, a.prompt_pruned) for a in answers] == [
        (a.prompt_unpruned, a.prompt_pruned) for a in plain
    ]


def test_agent_first_pass_is_the_model_at_the_agent_budget(engine, pictures):
    question = QUESTIONS[0]
    answer = engine.ask(pictures[0], question, tokens=8, max_new_tokens=3, agent=True, agent_tokens=4)
    first = engine.ask(pictures[0], question, tokens=4, max_new_tokens=AGENT_MAX_NEW_TOKENS)
    assert answer.agent_answer == first.answer
    default = engine.ask(pictures[0], question, tokens=8, max_new_tokens=3, agent=True)
    same_budget = engine.ask(pictures[0], question, tokens=8, max_new_tokens=AGENT_MAX_NEW_TOKENS)
    assert default.agent_answer == same_budget.answer


def test_nothing_pruned_means_the_agent_changes_nothing(engine, pictures):
    full = engine.ask(pictures[1], QUESTIONS[1], method="full", max_new_tokens=5)
    plain = engine.ask(pictures[1], QUESTIONS[1], tokens=64, max_new_tokens=5)
    agent = engine.ask(pictures[1], QUESTIONS[1], tokens=64, max_new_tokens=5, agent=True)
    assert agent.agent_answer is not None and plain.agent_answer is None
    assert agent.output_ids == plain.output_ids == full.output_ids
    assert agent.kept_indices == [list(range(agent.vision_total))] and agent.vision_kept == agent.vision_total


def test_agent_cost_is_its_own_timing_and_part_of_the_total(engine, pictures, monkeypatch):
    """The agent's first pass (its selection and its generation) is timed as `agent`, not in a neighbour."""
    clocks = StageClocks(monkeypatch, engine)
    start = time.perf_counter()
    answer = engine.ask(pictures[0], QUESTIONS[0], tokens=8, max_new_tokens=2, agent=True, ignore_eos=True)
    wall = (time.perf_counter() - start) * 1e3
    timings, calls = answer.timings_ms, clocks.calls
    assert len(calls["select"]) == 2 and len(calls["forward"]) > 2  # the agent's pass, then the answer's
    agent_forwards, answer_forwards = calls["forward"][:-2], calls["forward"][-2:]
    assert timings["agent"] >= calls["select"][0] + sum(agent_forwards) - ROUNDING_MS
    assert timings["select"] >= calls["select"][1] - ROUNDING_MS
    assert timings["prefill"] + timings["decode"] >= sum(answer_forwards) - ROUNDING_MS
    parts = sum(v for k, v in timings.items() if k != "total")
    assert timings["total"] == pytest.approx(parts, abs=0.01)
    assert timings["total"] <= wall  # the agent's time is not also counted in another stage
    assert "agent" not in engine.ask(pictures[0], QUESTIONS[0], tokens=8, max_new_tokens=2).timings_ms


def test_agent_batch_equals_one_at_a_time(engine, pictures):
    batch = engine.run(pictures, QUESTIONS, tokens=[3, 64, 10], max_new_tokens=4, agent=True)
    for picture, question, k, got in zip(pictures, QUESTIONS, [3, 64, 10], batch):
        alone = engine.ask(picture, question, tokens=k, max_new_tokens=4, agent=True)
        assert (got.agent_answer, got.answer, got.kept_indices) == (alone.agent_answer, alone.answer,
                                                                   alone.kept_indices)


@pytest.mark.parametrize("family", ["llava-next", "qwen2.5-vl"])
def test_agent_in_the_other_families(family, tiny_qwen, tmp_path, pictures):
    """The first pass reuses each family's own encoded tokens (crops, merged tokens) and shortened inputs."""
    if family == "qwen2.5-vl":
        folder = tiny_qwen
    else:
        from mmtok_cli.tiny import build_tiny_llava_next

        folder = build_tiny_llava_next(tmp_path / "next", seed=0)
    main = Engine(str(folder), device=TEST_DEVICE, dtype="float32")
    batch = main.run(pictures[:2], QUESTIONS[:2], tokens=[6, 10], max_new_tokens=3, agent=True)
    for picture, question, k, got in zip(pictures, QUESTIONS, [6, 10], batch):
        alone = main.ask(picture, question, tokens=k, max_new_tokens=3, agent=True)
        assert (got.agent_answer, got.output_ids, got.kept_indices) == (alone.agent_answer, alone.output_ids,
                                                                        alone.kept_indices)
        assert got.vision_kept == k and got.agent_answer is not None
    n = batch[0].vision_total
    full = main.ask(pictures[0], QUESTIONS[0], method="full", max_new_tokens=3)
    assert main.ask(pictures[0], QUESTIONS[0], tokens=n, max_new_tokens=3, agent=True).output_ids == full.output_ids


def test_methods_without_t_reject_the_agent(engine, pictures):
    from mmtok_cli.errors import UsageError

    with pytest.raises(UsageError, match="--agent changes only"):
        engine.ask(pictures[0], QUESTIONS[0], method="random", tokens=8, agent=True)
    text = engine.ask(pictures[0], QUESTIONS[0], method="text", tokens=8, max_new_tokens=2, agent=True)
    assert text.agent_answer is not None and text.vision_kept == 8


def test_second_agent_model(two_model_engine, qwen_engine, pictures, monkeypatch):
    images, questions = pictures[:2], QUESTIONS[:2]
    main_encodes = spy(monkeypatch, two_model_engine.adapter, "encode")
    agent_encodes = spy(monkeypatch, qwen_engine.adapter, "encode")
    answers = two_model_engine.run(images, questions, tokens=8, max_new_tokens=3, agent=True)
    assert len(main_encodes) == 1 and len(agent_encodes) == 1  # one batched pass of each model
    monkeypatch.undo()
    # The agent model reads every one of its vision tokens by default, and is batched like any run.
    alone = qwen_engine.run(images, questions, method="full", max_new_tokens=AGENT_MAX_NEW_TOKENS)
    assert [a.agent_answer for a in answers] == [a.answer for a in alone]
    assert all(a.timings_ms["agent"] > 0 for a in answers)
    # The main model selected with T extended by those answers.
    main = two_model_engine
    text, mask, _ = extended_text(main, questions, [a.answer for a in alone])
    with torch.inference_mode():
        vt = main.adapter.encode(main.prepare(images, questions))
        kept = main.adapter.select(vt, text, mask, [8, 8], method="mmtok", alpha=ALPHA, tau_t=main.adapter.tau_t,
                                   tau_v=TAU_V).indices
    assert [a.kept_indices[0] for a in answers] == [k.tolist() for k in kept]
    # --agent-tokens gives the agent model a budget of its own.
    budget = two_model_engine.ask(images[0], questions[0], tokens=8, max_new_tokens=2, agent=True, agent_tokens=3)
    assert budget.agent_answer == qwen_engine.ask(images[0], questions[0], tokens=3,
                                                  max_new_tokens=AGENT_MAX_NEW_TOKENS).answer


# -- the command line --------------------------------------------------------------------------------


def test_ask_agent_json(tiny_llava, image_file, engine):
    from mmtok_cli.io import load_image

    result = runner.invoke(app, ["ask", str(image_file), QUESTIONS[0], "--model", str(tiny_llava),
                                 "--device", TEST_DEVICE,
                                 "--tokens", "8", "--max-new-tokens", "3", "--agent", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    direct = engine.ask(load_image(str(image_file)), QUESTIONS[0], tokens=8, max_new_tokens=3, agent=True)
    assert record["agent_answer"] == direct.agent_answer and record["answer"] == direct.answer
    assert record["kept_indices"] == direct.kept_indices
    assert record["timings_ms"]["agent"] > 0
    human = runner.invoke(app, ["ask", str(image_file), QUESTIONS[0], "--model", str(tiny_llava),
                                "--device", TEST_DEVICE,
                                "--tokens", "8", "--max-new-tokens", "3", "--agent"])
    assert human.exit_code == 0 and f"agent answered {direct.agent_answer!r} first" in human.stderr


def test_agent_options_from_a_config_file(tiny_llava, image_file, tmp_path, engine):
    from mmtok_cli.io import load_image

    config = tmp_path / "agent.yaml"
    config.write_text(f"model: {tiny_llava}\ndevice: {TEST_DEVICE}\ntokens: 8\nagent: true\nagent-tokens: 4\n"
                      "max_new_tokens: 2\n")
    result = runner.invoke(app, ["ask", str(image_file), QUESTIONS[0], "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    image, question = load_image(str(image_file)), QUESTIONS[0]
    expected = engine.ask(image, question, tokens=8, max_new_tokens=2, agent=True, agent_tokens=4)
    assert (record["agent_answer"], record["answer"]) == (expected.agent_answer, expected.answer)
    # what the run would have said had the file's agent-tokens or max_new_tokens been lost
    assert engine.ask(image, question, tokens=8, max_new_tokens=2, agent=True).agent_answer != expected.agent_answer
    assert engine.ask(image, question, tokens=8, agent=True, agent_tokens=4).answer != expected.answer


def test_ask_with_a_second_agent_model(tiny_llava, tiny_qwen, image_file, qwen_engine):
    from mmtok_cli.io import load_image

    result = runner.invoke(app, ["ask", str(image_file), QUESTIONS[0], "--model", str(tiny_llava),
                                 "--device", TEST_DEVICE,
                                 "--tokens", "8", "--max-new-tokens", "2", "--agent", "--agent-model", str(tiny_qwen),
                                 "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    first = qwen_engine.ask(load_image(str(image_file)), QUESTIONS[0], method="full",
                            max_new_tokens=AGENT_MAX_NEW_TOKENS)
    assert record["agent_answer"] == first.answer and record["timings_ms"]["agent"] > 0


def test_batch_agent_records_equal_one_at_a_time(tiny_llava, engine, pictures, tmp_path):
    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"p{i}.png")
    data = write_jsonl(tmp_path / "q.jsonl", [{"image": f"p{i}.png", "question": q} for i, q in enumerate(QUESTIONS)])
    result = runner.invoke(app, ["batch", str(data), "--model", str(tiny_llava),
                                 "--device", TEST_DEVICE, "--tokens", "6",
                                 "--max-new-tokens", "3", "--batch-size", "3", "--agent"])
    assert result.exit_code == 0, result.output
    recs = records(result.stdout)
    for rec, picture, question in zip(recs, pictures, QUESTIONS):
        alone = engine.ask(picture, question, tokens=6, max_new_tokens=3, agent=True)
        assert (rec["agent_answer"], rec["answer"]) == (alone.agent_answer, alone.answer)
        assert rec["timings_ms"]["agent"] > 0 and list(rec)[:5] == ["id", "image", "question", "answer",
                                                                    "agent_answer"]
    assert "the agent's first pass took" in result.stderr
    plain = runner.invoke(app, ["batch", str(data), "--model", str(tiny_llava),
                                "--device", TEST_DEVICE, "--tokens", "6",
                                "--max-new-tokens", "3"])
    assert "agent_answer" not in records(plain.stdout)[0] and "agent" not in plain.stderr


def test_eval_compares_with_and_without_the_agent(tiny_llava, tmp_path):
    from mmtok_cli.synth import generate

    generate(tmp_path, 2, seed=0)
    data, out = tmp_path / "questions.jsonl", tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(data), "--model", str(tiny_llava),
                                 "--device", TEST_DEVICE, "--tokens", "8,2",
                                 "--methods", "mmtok,random", "--max-new-tokens", "2", "--agent", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [(r["method"], r["tokens"]) for r in report["results"]] == [
        ("full", "full"), ("mmtok", 8), ("mmtok", 2), ("mmtok+agent", 8), ("mmtok+agent", 2), ("random", 8),
        ("random", 2),
    ]
    for r in report["results"]:
        assert {"method", "tokens", "accuracy", "f1", "retention", "mean_kept", "items_per_s"} <= set(r)
        assert r["failed"] == 0
    assert "mmtok+agent" in result.stdout


@pytest.mark.parametrize("command, args, message", [
    ("ask", ["--agent-model", "x"], "go with --agent"),
    ("ask", ["--agent-tokens", "4"], "go with --agent"),
    ("ask", ["--agent", "--method", "random"], "--agent changes only"),
    ("ask", ["--agent", "--agent-tokens", "0"], "--agent-tokens must be at least 1"),
    ("batch", ["--agent", "--method", "divprune"], "--agent changes only"),
    ("eval", ["--agent", "--methods", "random,uniform"], "add one of them to --methods"),
    ("eval", ["--agent-model", "x"], "go with --agent"),
])
def test_bad_agent_options_are_one_line_usage_errors(tmp_path, image_file, command, args, message):
    data = write_jsonl(tmp_path / "d.jsonl", [{"image": str(image_file), "question": "Is it?", "answer": "yes"}])
    where = [str(image_file), "What?"] if command == "ask" else [str(data)]
    result = runner.invoke(app, [command, *where, "--model", str(tmp_path / "no-model"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["ask", "batch"])
def test_unknown_agent_model_is_one_line_before_the_model_loads(tiny_llava, image_file, tmp_path, command):
    data = write_jsonl(tmp_path / "d.jsonl", [{"image": str(image_file), "question": "Is it?"}])
    where = [str(image_file), "What?"] if command == "ask" else [str(data), "--out", str(tmp_path / "out.jsonl")]
    missing = tmp_path / "no-such-agent"
    result = runner.invoke(app, [command, *where, "--model", str(tiny_llava), "--device", TEST_DEVICE, "--agent",
                                 "--agent-model", str(missing)])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line == f"error: agent model: no model folder at '{missing}'"
    file = tmp_path / "file.txt"
    file.write_text("x")
    result = runner.invoke(app, [command, *where, "--model", str(tiny_llava), "--device", TEST_DEVICE, "--agent",
                                 "--agent-model", str(file)])
    assert result.exit_code == 1 and "--agent-model must be a checkpoint folder" in result.output


def test_ray_workers_run_the_agent_like_the_local_batch(tiny_llava, tiny_qwen, pictures, tmp_path):
    from .test_ray import comparable

    for i, picture in enumerate(pictures):
        picture.save(tmp_path / f"p{i}.png")
    data = write_jsonl(tmp_path / "q.jsonl", [{"image": f"p{i}.png", "question": q} for i, q in enumerate(QUESTIONS)])
    common = [str(data), "--model", str(tiny_llava), "--device", TEST_DEVICE, "--dtype", "float32", "--tokens", "6",
              "--max-new-tokens", "3", "--batch-size", "2", "--agent", "--agent-model", str(tiny_qwen)]
    local = runner.invoke(app, ["batch", *common])
    out = tmp_path / "ray.jsonl"
    distributed = runner.invoke(app, ["batch", *common, "--out", str(out), "--ray", "--workers", "1"])
    assert local.exit_code == distributed.exit_code == 0, distributed.output
    recs = records(out.read_text())
    assert comparable(recs) == comparable(records(local.stdout))
    assert all(r["agent_answer"] is not None and r["timings_ms"]["agent"] > 0 for r in recs)
