"""`mmtok batch`: inputs, one record per line in order, bad lines, batching, resume, URLs, config."""

import functools
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mmtok_cli.batch import BatchOptions, BatchRunner
from mmtok_cli.cli import app
from mmtok_cli.flops import estimated_speedup, prefill_flops
from mmtok_cli.io import load_image, read_jsonl
from mmtok_cli.models.base import Released

from .conftest import noise_image
from .device import TEST_DEVICE

runner = CliRunner()
SIZES = [(160, 120), (90, 200), (112, 112), (300, 80), (64, 64)]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def invoke(*args: str, **kwargs):
    return runner.invoke(app, ["batch", *args], **kwargs)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of noise images of different sizes, plus a corrupt one and a truncated one."""
    folder = tmp_path_factory.mktemp("images")
    for i, size in enumerate(SIZES):
        noise_image(10 + i, size).save(folder / f"img{i}.png")
    (folder / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    data = (folder / "img0.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def server(images):
    """The image folder served over http on 127.0.0.1 (URL inputs without internet)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(images))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


BROKEN = [
    "{not json",
    "[1, 2]",
    {"question": "no image here"},
    {"image": "img0.png"},
    {"image": "img0.png", "question": "   "},
    {"image": "img0.png", "question": "what?", "tokens": 0},
    {"image": "missing.png", "question": "what?"},
    {"image": "corrupt.jpg", "question": "what?"},
    {"image": "truncated.png", "question": "what?"},
    "",
]
BROKEN_ERRORS = ["not valid JSON", "expected a JSON object", "missing 'image'", "missing 'question'",
                 "question is empty", "'tokens' must be a positive integer", "image not found",
                 "not an image PIL can read", "could not be decoded", "empty line"]
QUESTIONS = ["what is in this image ?", "is there a red circle ?", "how many cats are on the sofa ?",
             "which colour is the car ?", "describe the photo in detail ."]


def test_200_lines_10_broken_match_one_at_a_time(tiny_llava, engine, images, tmp_path):
    """The issue's acceptance run: every line gets a record, in order; good ones equal `ask` one by one."""
    lines, expected = [], []
    broken_at = {20 * i + 7: i for i in range(10)}
    for n in range(1, 201):
        if n in broken_at:
            lines.append(BROKEN[broken_at[n]])
            expected.append(BROKEN_ERRORS[broken_at[n]])
            continue
        line = {"image": f"img{n % 5}.png", "question": QUESTIONS[n % 4], "note": n}
        if n % 7 == 0:
            line["tokens"] = [4, 16, 100][n % 3]
        if n % 11 == 0:
            line["max_new_tokens"] = 2
        lines.append(line)
        expected.append(line)
    data = write_jsonl(images / "questions.jsonl", lines)
    out = tmp_path / "answers.jsonl"

    result = invoke(str(data), "--out", str(out), "--model", str(tiny_llava), "--tokens", "8",
                    "--max-new-tokens", "6", "--batch-size", "8", "--device", TEST_DEVICE, "--dtype", "float32")

    assert result.exit_code == 1, result.stderr  # some items failed
    assert result.stdout == ""
    recs = records(out.read_text())
    assert len(recs) == 200
    assert [r["id"] for r in recs] == list(range(1, 201))
    assert sum(r["error"] is not None for r in recs) == 10
    assert "200 items: 190 ok, 10 failed" in result.stderr
    for rec, want in zip(recs, expected):
        if isinstance(want, str):
            assert want in rec["error"] and rec["answer"] is None
            continue
        alone = engine.ask(load_image(str(images / want["image"])), want["question"],
                           tokens=want.get("tokens", 8), max_new_tokens=want.get("max_new_tokens", 6))
        assert rec["error"] is None
        assert rec["answer"] == alone.answer
        assert {k: rec["vision_tokens"][k] for k in ("total", "kept")} == {"total": alone.vision_total, "kept": alone.vision_kept}
        assert rec["prompt_tokens"] == {"unpruned": alone.prompt_unpruned, "pruned": alone.prompt_pruned}
        assert rec["note"] == want["note"]  # unknown keys carried through
        assert rec["speedup"]["estimated"] == alone.speedup_estimated and rec["speedup"]["measured"] is None
        assert set(rec["timings_ms"]) == {"load", "preprocess", "vision", "select", "prefill", "decode", "total"}


def test_batch_of_8_equals_batch_of_1(tiny_llava, images):
    lines = [{"image": f"img{i % 5}.png", "question": QUESTIONS[i % 5], "tokens": [2, 8, 64][i % 3]}
             for i in range(12)]
    data = write_jsonl(images / "b8.jsonl", lines)
    answers = {}
    for b in ("1", "8"):
        result = invoke(str(data), "--model", str(tiny_llava), "--max-new-tokens", "8", "--batch-size", b,
                        "--device", TEST_DEVICE, "--dtype", "float32")
        assert result.exit_code == 0, result.stderr
        answers[b] = [(r["answer"], r["vision_tokens"], r["prompt_tokens"]) for r in records(result.stdout)]
    assert answers["1"] == answers["8"]
    assert len(answers["1"]) == 12


def test_relative_paths_urls_and_carried_keys(tiny_llava, images, server, tmp_path):
    nested = tmp_path / "sub"
    nested.mkdir()
    (nested / "local.png").write_bytes((images / "img1.png").read_bytes())
    lines = [
        {"id": "a", "image": "local.png", "question": "what is this ?", "answer": "gold", "input": 1, "meta": [1]},
        {"id": "b", "image": str(images / "img2.png"), "question": "what is this ?"},
        {"id": "c", "image": f"{server}/img3.png", "question": "what is this ?"},
        {"id": "d", "image": f"{server}/nothing-here.png", "question": "what is this ?"},
        {"id": "e", "image": f"{server}/corrupt.jpg", "question": "what is this ?"},
    ]
    data = write_jsonl(nested / "q.jsonl", lines)
    result = invoke(str(data), "--model", str(tiny_llava), "--max-new-tokens", "3", "--device", TEST_DEVICE)
    recs = {r["id"]: r for r in records(result.stdout)}
    assert result.exit_code == 1
    assert [r["error"] for r in recs.values()][:3] == [None, None, None]
    assert recs["a"]["meta"] == [1] and recs["a"]["input"] == {"answer": "gold", "input": 1}
    assert "HTTP 404" in recs["d"]["error"]
    assert "not an image" in recs["e"]["error"]
    # The URL image is the same picture as the local file it serves.
    local = invoke(str(write_jsonl(tmp_path / "l.jsonl", [{"image": str(images / "img3.png"),
                                                           "question": "what is this ?"}])),
                   "--model", str(tiny_llava), "--max-new-tokens", "3", "--device", TEST_DEVICE)
    assert records(local.stdout)[0]["answer"] == recs["c"]["answer"]


def test_folder_input_with_question(tiny_llava, images, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        (folder / name).write_bytes((images / "img0.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    result = invoke(str(folder), "--question", "what is in this image ?", "--model", str(tiny_llava),
                    "--max-new-tokens", "3", "--device", TEST_DEVICE)
    assert result.exit_code == 0, result.stderr
    recs = records(result.stdout)
    assert [r["id"] for r in recs] == ["a.png", "b.png"]
    assert recs[0]["answer"] == recs[1]["answer"]
    assert "notes.txt" in result.stderr  # skipped, and said so
    missing_q = invoke(str(folder), "--model", str(tiny_llava))
    assert missing_q.exit_code == 2 and "--question" in missing_q.stderr


def test_stdin_to_stdout_through_a_real_pipe(tiny_llava, images):
    lines = [{"image": str(images / f"img{i}.png"), "question": "what is this ?"} for i in range(3)] + ["oops"]
    proc = subprocess.run(
        [sys.executable, "-m", "mmtok_cli", "batch", "-", "--out", "-", "--model", str(tiny_llava),
         "--max-new-tokens", "3", "--device", TEST_DEVICE],
        input="".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    recs = records(proc.stdout)  # stdout is nothing but JSONL
    assert [r["id"] for r in recs] == [1, 2, 3, 4]
    assert [r["error"] is None for r in recs] == [True, True, True, False]
    assert "4 items: 3 ok, 1 failed" in proc.stderr


def test_reader_closing_the_pipe_stops_quietly(tiny_llava, images):
    """`mmtok batch ... | head -1`: no traceback, no error line, the SIGPIPE status."""
    lines = "".join(json.dumps({"image": str(images / "img0.png"), "question": "what ?"}) + "\n" for _ in range(60))
    proc = subprocess.Popen([sys.executable, "-m", "mmtok_cli", "batch", "-", "--model", str(tiny_llava),
                             "--max-new-tokens", "2", "--batch-size", "1", "--device", TEST_DEVICE],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write(lines)
    proc.stdin.close()
    assert json.loads(proc.stdout.readline())["id"] == 1
    proc.stdout.close()
    assert proc.wait(60) == 141
    assert proc.stderr.read() == ""


def _feed_until_written(proc: subprocess.Popen, lines: list[str], out: Path, n: int, timeout: float = 90) -> None:
    """Pipe `lines` in, then wait (input left open) until `out` holds n records: the run is mid-stream."""
    proc.stdin.write("".join(lines))
    proc.stdin.flush()
    deadline = time.monotonic() + timeout
    while not (out.exists() and out.read_text().count("\n") >= n):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


def test_interrupt_kill_and_resume_give_every_id_once(tiny_llava, images, tmp_path):
    n = 40
    lines = [json.dumps({"id": f"q{i}", "image": f"img{i % 5}.png", "question": "what is this ?"}) + "\n"
             for i in range(n)]
    data = images / "resume.jsonl"
    data.write_text("".join(lines))
    out = tmp_path / "answers.jsonl"
    common = ["--out", str(out), "--model", str(tiny_llava), "--max-new-tokens", "4", "--batch-size", "2",
              "--device", TEST_DEVICE]

    # Ctrl-C while more input is still to come: exit 130 and whole lines only.
    # A shell's background job ignores SIGINT and children inherit that: give the child Ctrl-C back.
    first = subprocess.Popen([sys.executable, "-m", "mmtok_cli", "batch", "-", *common], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=images,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _feed_until_written(first, lines[:10], out, 10)
    first.send_signal(signal.SIGINT)
    assert first.wait(60) == 130
    assert "--resume" in first.stderr.read()
    assert out.read_text().endswith("\n")

    # A hard kill, then a torn last line as if the kill had landed mid-write.
    second = subprocess.Popen([sys.executable, "-m", "mmtok_cli", "batch", "-", *common, "--resume"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              cwd=images)
    _feed_until_written(second, lines[:20], out, 20)
    second.kill()
    second.wait(60)
    with out.open("a") as fp:
        fp.write('{"id": "q39", "answer": "half a li')

    third = subprocess.run([sys.executable, "-m", "mmtok_cli", "batch", str(data), *common, "--resume"],
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    ids = [r["id"] for r in records(out.read_text())]
    assert sorted(ids) == sorted(f"q{i}" for i in range(n))  # each exactly once
    assert "(20 already done)" in third.stderr


def test_existing_output_needs_resume_or_overwrite(tiny_llava, images, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"image": str(images / "img0.png"), "question": "what ?"}])
    out = tmp_path / "answers.jsonl"
    out.write_text('{"id": 5}\n')
    refused = invoke(str(data), "--out", str(out), "--model", str(tiny_llava))
    assert refused.exit_code == 2 and "--resume" in refused.stderr
    assert out.read_text() == '{"id": 5}\n'  # untouched
    replaced = invoke(str(data), "--out", str(out), "--overwrite", "--model", str(tiny_llava),
                      "--max-new-tokens", "2", "--device", TEST_DEVICE)
    assert replaced.exit_code == 0, replaced.stderr
    assert [r["id"] for r in records(out.read_text())] == [1]
    assert invoke("-", "--out", "-", "--resume", "--model", str(tiny_llava), input="").exit_code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere.jsonl"], "not found"),
        (["{data}", "--batch-size", "0"], "--batch-size"),
        (["{data}", "--tokens", "0"], "--tokens"),
        (["{data}", "--out", "/no/such/dir/out.jsonl"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_before_loading(args, message, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"image": "x.png", "question": "q"}])
    result = invoke(*[a.replace("{data}", str(data)) for a in args], "--model", "/no/model/needed")
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


class OutOfMemoryAbove:
    """The real engine, except that batches larger than `limit` raise CUDA out-of-memory."""

    def __init__(self, engine, limit: int) -> None:
        self.engine, self.limit, self.sizes = engine, limit, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run_prepared(self, prepared, questions, **options):
        self.sizes.append(len(questions))
        if len(questions) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return self.engine.run_prepared(prepared, questions, **options)


def test_out_of_memory_halves_the_batch_and_loses_nothing(engine, images):
    lines = [json.dumps({"image": f"img{i % 5}.png", "question": "what is this ?"}) for i in range(10)]
    flaky = OutOfMemoryAbove(engine, limit=2)
    bound = engine.cache.max_bytes
    got = []
    summary = BatchRunner(flaky, BatchOptions(tokens=8, max_new_tokens=4, batch_size=8), base=images).run(
        read_jsonl(lines), got.extend)
    assert [r["id"] for r in got] == list(range(1, 11)) and summary.failed == 0
    assert flaky.sizes[:2] == [8, 4] and max(flaky.sizes[2:]) == 2  # 8 failed, 4 failed, then 2s
    assert summary.batch_size == 2
    assert engine.cache.max_bytes == bound // 4  # it yielded to the batches twice, and stays smaller
    engine.set_cache(None)
    plain = BatchRunner(engine, BatchOptions(tokens=8, max_new_tokens=4, batch_size=1), base=images)
    again = []
    plain.run(read_jsonl(lines), again.extend)
    assert [r["answer"] for r in got] == [r["answer"] for r in again]


def test_compare_measures_speedup_and_agreement(tiny_llava, images, engine):
    """--compare's unpruned answer is the unpruned model's (`Engine.ask` with method full), at a budget that really
    prunes; `agree` says whether the two answers match, both ways."""
    question = "what is this ?"
    lines = [{"image": f"img{i}.png", "question": question} for i in range(3)]
    lines.append({"image": "img0.png", "question": question, "tokens": 64})  # all 64 tokens: the same answer
    data = write_jsonl(images / "cmp.jsonl", lines)
    result = invoke(str(data), "--model", str(tiny_llava), "--tokens", "2", "--compare", "--max-new-tokens", "4",
                    "--device", TEST_DEVICE)
    assert result.exit_code == 0, result.output
    got = records(result.stdout)
    agreed = []
    for line, rec in zip(lines, got):
        image = load_image(str(images / line["image"]))
        k = line.get("tokens", 2)
        pruned = engine.ask(image, question, tokens=k, max_new_tokens=4)
        full = engine.ask(image, question, method="full", max_new_tokens=4)
        assert rec["vision_tokens"]["kept"] == k and rec["answer"] == pruned.answer
        assert rec["compare"]["answer"] == full.answer
        assert rec["compare"]["agree"] is (full.answer == pruned.answer)
        agreed.append(rec["compare"]["agree"])
        totals = rec["timings_ms"]["total"], rec["compare"]["timings_ms"]["total"]
        assert rec["speedup"]["measured"] == round(totals[1] / totals[0], 3)
        assert (rec["speedup"]["estimated"] > 1) is (k < 64)
    assert agreed[-1] is True and False in agreed  # the budget of 2 changed an answer


def test_estimated_speedup_is_the_prefill_flops_ratio(engine):
    config = engine.adapter.model.config
    text = config.get_text_config()
    d, layers, ffn, vocab = text.hidden_size, text.num_hidden_layers, text.intermediate_size, text.vocab_size
    heads, kv = text.num_attention_heads, text.num_key_value_heads
    hd = d // heads

    def by_hand(length):
        per_layer = (2 * length * d * hd * (2 * heads + 2 * kv) + 2 * heads * hd * length * (length + 1)
                     + 6 * length * d * ffn)
        return layers * per_layer + 2 * d * vocab

    assert prefill_flops(text, 100) == by_hand(100)
    assert estimated_speedup(config, 600, 88) == pytest.approx(by_hand(600) / by_hand(88))
    assert estimated_speedup(config, 90, 90) == 1.0


def test_config_file_supplies_defaults_and_flags_win(tiny_llava, images, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"image": str(images / "img0.png"), "question": "what ?"}])
    config = tmp_path / "mmtok.yaml"
    config.write_text(f"model: {tiny_llava}\ntokens: 5\nmax-new-tokens: 2\nbatch_size: 4\ndevice: cpu\njson: true\n")
    from_file = invoke(str(data), "--config", str(config))
    assert from_file.exit_code == 0, from_file.stderr
    assert records(from_file.stdout)[0]["vision_tokens"]["kept"] == 5
    flag_wins = invoke(str(data), "--config", str(config), "--tokens", "3")
    assert records(flag_wins.stdout)[0]["vision_tokens"]["kept"] == 3
    # One file serves both commands: `json` is an ask option, `batch_size` a batch option.
    asked = runner.invoke(app, ["ask", str(images / "img0.png"), "what ?", "--config", str(config)])
    assert asked.exit_code == 0, asked.stderr
    assert json.loads(asked.stdout)["vision_tokens"]["kept"] == 5

    config.write_text("tokenz: 5\n")
    typo = invoke(str(data), "--config", str(config))
    assert typo.exit_code == 2 and "tokenz" in typo.stderr
    config.write_text("tokens: [unclosed\n")
    assert invoke(str(data), "--config", str(config)).exit_code == 2
    config.write_text("tokens: many\n")
    assert invoke(str(data), "--config", str(config)).exit_code == 2


@pytest.mark.parametrize("family", ["llava-next", "qwen2.5-vl", "qwen3-vl"])
def test_other_families_batch_equals_one_at_a_time(family, images, tmp_path):
    """`batch` is family-agnostic: mixed image sizes and budgets, a bad line, and the background
    preprocessor (a copy of the family's processor) give what `ask` gives one image at a time."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_llava_next, build_tiny_qwen_vl

    path = tmp_path / family
    if family == "llava-next":
        build_tiny_llava_next(path, seed=3)
    else:
        build_tiny_qwen_vl(path, version=family.removeprefix("qwen").removesuffix("-vl"), seed=3)
    lines = [{"image": f"img{i % 5}.png", "question": QUESTIONS[i % 5], "tokens": [3, 8, 500][i % 3]}
             for i in range(7)]
    lines.insert(3, {"image": "corrupt.jpg", "question": "what ?"})
    data = write_jsonl(images / f"{family}.jsonl", lines)
    result = invoke(str(data), "--model", str(path), "--max-new-tokens", "4", "--batch-size", "4",
                    "--device", TEST_DEVICE, "--dtype", "float32")
    assert result.exit_code == 1, result.stderr
    recs = records(result.stdout)
    assert len(recs) == 8 and recs[3]["error"] and all(r["error"] is None for i, r in enumerate(recs) if i != 3)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    for rec, line in zip(recs, lines):
        if rec["error"]:
            continue
        alone = engine.ask(load_image(str(images / line["image"])), line["question"], tokens=line["tokens"],
                           max_new_tokens=4)
        assert rec["answer"] == alone.answer
        assert {k: rec["vision_tokens"][k] for k in ("total", "kept")} == {"total": alone.vision_total, "kept": alone.vision_kept}
        assert rec["prompt_tokens"]["pruned"] == alone.prompt_pruned


def test_one_runner_serves_many_runs(engine, images):
    """A Ray actor keeps one runner for all its blocks: a finished run must not stop the next."""
    runner_ = BatchRunner(engine, BatchOptions(tokens=8, max_new_tokens=2, batch_size=2), base=images)
    for _ in range(3):
        got = []
        lines = [json.dumps({"image": "img1.png", "question": "what ?"})] * 3
        assert runner_.run(read_jsonl(lines), got.extend).ok == 3 and len(got) == 3


def test_resume_with_retry_errors_reruns_only_failed_items(tiny_llava, images, tmp_path):
    """A transient failure (here: an image that appears later) is retried; good records stay as they were."""
    late = tmp_path / "late.png"
    data = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "ok", "image": str(images / "img0.png"), "question": "what ?"},
        {"id": "late", "image": str(late), "question": "what ?"},
    ])
    out = tmp_path / "answers.jsonl"
    common = [str(data), "--out", str(out), "--model", str(tiny_llava), "--max-new-tokens", "2",
              "--device", TEST_DEVICE]
    assert invoke(*common).exit_code == 1
    first = out.read_text().splitlines()
    assert json.loads(first[1])["error"]

    assert invoke(*common, "--retry-errors").exit_code == 2  # needs --resume
    late.write_bytes((images / "img1.png").read_bytes())
    again = invoke(*common, "--resume", "--retry-errors")
    assert again.exit_code == 0, again.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == first[0]  # untouched
    assert [json.loads(line)["id"] for line in lines] == ["ok", "late"]
    assert json.loads(lines[1])["error"] is None


# -- the loader's memory (issue 24) ------------------------------------------------------------------


def test_originals_are_let_go_after_preprocessing_unless_a_picture_needs_them(engine, images, tmp_path):
    lines = [json.dumps({"image": f"img{i % 5}.png", "question": f"what is {i} ?"}) for i in range(6)]
    pictures = [load_image(str(images / f"img{i % 5}.png")) for i in range(6)]
    questions = [f"what is {i} ?" for i in range(6)]
    options = {"tokens": 8, "max_new_tokens": 3}
    for method in ("random", "mmtok"):
        got, chunks = [], []
        BatchRunner(engine, BatchOptions(method=method, batch_size=4, **options), base=images).run(
            read_jsonl(lines), got.extend, reuse=chunks)
        assert chunks and all(c.prepared.released and not c.prepared.pixels for c in chunks)
        assert all(isinstance(v, Released) for c in chunks for v in c.prepared.images)  # tensors, keys, seeds wait
        assert all(e.image is None for c in chunks for e in c.entries)
        # random's draw follows each image's pixels, taken while preprocessing: the same as with the images at hand
        want = engine.run(pictures[:4], questions[:4], method=method, **options) + engine.run(
            pictures[4:], questions[4:], method=method, **options)
        assert [r["answer"] for r in got] == [a.answer for a in want]
        assert [r["vision_tokens"]["kept"] for r in got] == [a.vision_kept for a in want]
    chunks = []
    BatchRunner(engine, BatchOptions(batch_size=4, show_dir=tmp_path, **options), base=images).run(
        read_jsonl(lines), lambda records: None, reuse=chunks)
    assert [len(c.prepared.images) for c in chunks] == [4, 2]  # the pictures are drawn on them
    assert all(c.prepared.pixels for c in chunks)


def test_images_in_flight_are_bounded_in_bytes_not_batches(engine, tmp_path):
    """Large images go to the model in smaller chunks, so the loader's bytes stay bounded; the answers stay."""
    for i in range(3):
        noise_image(60 + i, (1024, 768)).save(tmp_path / f"big{i}.png")  # 5.5 MB held each, with the processor's copy
    lines = [json.dumps({"image": f"big{i % 3}.png", "question": "what is this ?"}) for i in range(6)]
    results = {}
    for limit_mb in (512, 12):
        runner_ = BatchRunner(engine, BatchOptions(tokens=8, max_new_tokens=3, batch_size=6), base=tmp_path)
        runner_.loader_bytes = limit_mb * 2**20
        got, chunks = [], []
        runner_.run(read_jsonl(lines), got.extend, reuse=chunks)
        results[limit_mb] = [len(c.ready) for c in chunks], [r["answer"] for r in got]
    assert results[512][0] == [6]
    assert max(results[12][0]) <= 3 and sum(results[12][0]) == 6  # two fit in 12 MB, the next one goes ahead
    assert results[12][1] == results[512][1]


def test_the_byte_budget_lets_the_item_the_loader_waits_for_go_ahead():
    from mmtok_cli.batch import ByteBudget

    stop = threading.Event()
    budget = ByteBudget(100, stop)
    budget.take(0, 80)
    took = threading.Event()
    later = threading.Thread(target=lambda: (budget.take(2, 50), took.set()))
    later.start()
    assert not took.wait(0.3)  # 80 + 50 > 100: item 2 waits
    budget.needs(1)
    budget.take(1, 50)  # item 1 does not fit either, but the loader waits for it: it goes ahead
    assert budget.used == 130 and budget.full
    budget.give(80)
    budget.give(50)
    assert took.wait(2) and budget.used == 50  # room again: item 2 took its bytes
    later.join()
    budget.needs(5)
    budget.take(5, 1000)  # whatever it costs
    assert budget.used == 1050
