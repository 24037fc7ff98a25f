"""Hostile or careless input (issue 17): nothing lost, nothing hung, memory bounded, one-line errors."""

import http.server
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.errors import MmtokError
from mmtok_cli.evaluate import load_labelled
from mmtok_cli.io import MAX_PIXELS, MAX_SIDE, _decode, fetch_image

from .conftest import noise_image
from .device import cpu_only

runner = CliRunner()


def run(*args: str, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def write_jsonl(path: Path, rows: list[dict], prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join(json.dumps(r) + "\n" for r in rows).encode())
    return path


def one_error_line(result) -> bool:
    lines = result.stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hardening")
    for i in range(3):
        noise_image(40 + i, (64 + 16 * i, 64)).save(folder / f"img{i}.png")
    return folder


# -- outputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_output_that_is_the_input_is_refused_and_the_input_kept(data, tmp_path, flag):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"image": str(data / "img0.png"), "question": "what?"}])
    before = questions.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(questions)
    for out in (questions, link):
        result = run("batch", questions, "--out", out, flag, "--model", "no/such-model")
        assert result.exit_code == 2 and one_error_line(result) and "input" in result.stderr
    assert questions.read_bytes() == before


def test_eval_outputs_cannot_overwrite_the_data(tmp_path):
    labelled = write_jsonl(tmp_path / "d.jsonl", [{"image": "x.png", "question": "q", "answer": "a"}])
    before = labelled.read_bytes()
    for flag in ("--json", "--predictions"):
        result = run("eval", labelled, flag, labelled, "--model", "no/such-model")
        assert result.exit_code == 2 and one_error_line(result) and "input" in result.stderr
    assert labelled.read_bytes() == before


def _unwritable_places(tmp_path: Path) -> list[tuple[str, Path]]:
    """Places where no output can go, as this user. Root may write almost anywhere `os.access` is asked about,
    yet procfs and sysfs refuse new files to root too, and /proc/version refuses to be opened for writing."""
    places = [(kind, Path(path)) for kind, path in (
        ("procfs folder", "/proc"), ("sysfs folder", "/sys/kernel"), ("procfs file", "/proc/version"),
    ) if os.path.exists(path)]
    if os.geteuid() != 0:  # permissions stop only other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        places.append(("read-only folder", locked))
    return places


FOLDER_OUTPUTS = {"batch": ("--show-dir",), "synth": ("--out",)}


def _every_output(place: Path, data_file: Path, image: Path) -> list[list[str]]:
    """Every output option of every command, aimed at `place` (a folder: a new file in it; a file: itself)."""
    def at(name: str) -> str:
        return str(place / name) if place.is_dir() else str(place)

    return [
        ["ask", str(image), "q?", "--show", at("kept.png")],
        ["show", str(image), "q?", "--out", at("kept.png")],
        ["batch", str(data_file), "--out", at("out.jsonl")],
        ["batch", str(data_file), "--show-dir", at("pictures")],
        ["eval", str(data_file), "--json", at("out.json")],
        ["eval", str(data_file), "--plot", at("out.png")],
        ["eval", str(data_file), "--predictions", at("out.jsonl")],
        ["profile", "--json", at("out.json")],
        ["profile", "--plot", at("out.png")],
        ["synth", "--out", at("synth")],
    ]


def test_outputs_that_cannot_really_be_written_are_refused_before_loading(tmp_path, image_file):
    places = _unwritable_places(tmp_path)
    assert len(places) >= 2, "this machine offers fewer than two kinds of unwritable place"
    labelled = write_jsonl(tmp_path / "d.jsonl", [{"image": str(image_file), "question": "q", "answer": "a"}])
    for kind, place in places:
        for args in _every_output(place, labelled, image_file):
            if place.is_file() and args[-2] in FOLDER_OUTPUTS.get(args[0], ()):
                continue  # a file given for a folder: refused as no folder, tested elsewhere
            # The model cannot be found either: an error about the output shows it was checked first.
            result = run(*args, *([] if args[0] == "synth" else ["--model", "no/such-model"]))
            assert result.exit_code == 2 and one_error_line(result), (kind, args, result.stderr)
            # the place exists: the error is that it cannot be written, naming the option and the path
            assert f"{args[-2]} '{args[-1]}' cannot be written" in result.stderr, (kind, args, result.stderr)
    assert not any(tmp_path.glob("**/.mmtok-probe-*"))


def test_a_writable_output_passes_the_check_untouched(tmp_path, image_file):
    existing = tmp_path / "out.json"
    existing.write_text("keep me")
    result = run("profile", "--json", existing, "--model", "no/such-model")
    assert result.exit_code == 1 and "no/such-model" in result.stderr  # past the output check, at the model
    assert existing.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["noise.png", "out.json"]


def _batch_in_child(args: list[str], *, max_file_bytes: int | None = None, stdout=subprocess.PIPE):
    """`mmtok batch ARGS` in a child process whose files cannot grow past `max_file_bytes`: a disk that fills up
    mid-run, for real (the kernel refuses the write; Python ignores the SIGXFSZ that comes with it)."""
    import resource

    def limit():
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "mmtok_cli", "batch", *map(str, args)], preexec_fn=limit,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300, check=False)


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line]


@pytest.mark.parametrize("pictures", [False, True], ids=["records", "pictures"])
def test_a_write_that_fails_mid_run_stops_in_one_line_and_resume_continues(tiny_llava, data, tmp_path, pictures):
    rows = [{"id": i, "image": str(data / f"img{i % 3}.png"), "question": f"what {i}?"} for i in range(6)]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "a.jsonl"
    common = [questions, "--model", tiny_llava, "--max-new-tokens", "2", "--batch-size", "1"]
    # Room for two records (~450 bytes each) but not three; a picture (several KB) fails at once.
    extra = ["--show-dir", tmp_path / "pictures"] if pictures else []
    failed = _batch_in_child([*common, "--out", out, *extra], max_file_bytes=1200)
    kept = out.read_text().splitlines()
    assert failed.returncode == 1 and len(_lines(failed.stderr)) == 1, failed.stderr
    line = failed.stderr.strip()
    name = str(tmp_path / "pictures") if pictures else str(out)
    assert line.startswith("error: cannot write ") and name in line and "File too large" in line, line
    assert f"{out} keeps {len(kept)} complete records" in line and "--resume" in line, line
    assert len(kept) == (0 if pictures else 2) and [json.loads(r)["id"] for r in kept] == list(range(len(kept)))
    done = run("batch", *common, "--out", out, *extra, "--resume")
    assert done.exit_code == 0, done.stderr
    assert [json.loads(r)["id"] for r in out.read_text().splitlines()] == list(range(6))


def test_outputs_on_a_full_device_fail_in_one_line(tiny_llava, data, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    args = [data, "--question", "what?", "--model", tiny_llava, "--max-new-tokens", "1"]
    full = run("batch", *args, "--out", "/dev/full")
    assert full.exit_code == 1 and _lines(full.stderr) == [
        "error: cannot write '/dev/full': No space left on device; 0 records went to /dev/full before it"]
    with open("/dev/full", "w") as device:  # stdout itself on the full device: a real file descriptor, a child
        piped = _batch_in_child([*args, "--out", "-"], stdout=device)
    assert piped.returncode == 1 and _lines(piped.stderr) == [
        "error: cannot write the records to stdout: No space left on device; 0 records went to stdout before it"]
    assert run("batch", *args, "--out", "/dev/null").exit_code == 0  # a device takes no fsync: not an error
    labelled = write_jsonl(tmp_path / "d.jsonl", [{"image": str(data / "img0.png"), "question": "q?", "answer": "a"}])
    for flag in ("--json", "--predictions"):
        result = run("eval", labelled, "--model", tiny_llava, "--methods", "mmtok", "--tokens", "4", flag, "/dev/full")
        assert result.exit_code == 1 and one_error_line(result), result.stderr
        assert f"cannot write {flag} '/dev/full': No space left on device" in result.stderr
        assert "retention" in result.stdout or flag == "--predictions"  # the table came first


def test_synth_into_a_non_empty_folder_needs_overwrite(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    refused = run("synth", "--out", tmp_path / "s", "--n", "1")
    assert refused.exit_code == 2 and one_error_line(refused) and "--overwrite" in refused.stderr
    assert run("synth", "--out", tmp_path / "s", "--n", "1", "--overwrite").exit_code == 0
    assert (tmp_path / "s" / "keep.txt").read_text() == "mine"


# -- network images ------------------------------------------------------------------------------------


class _Hostile(http.server.BaseHTTPRequestHandler):
    """/trickle: a byte every 0.3 s (for TRICKLE_S at most); /huge: announces 60 MB; /endless: no length, 64 KB
    chunks for 6 s."""

    TRICKLE_S = 20.0
    """Far longer than any deadline the tests set: a download still going when it ends had no deadline."""
    trickles: ClassVar[list[float]] = []
    """How long each /trickle download lasted, on the server's clock: from its first byte until the client hung
    up (noticed at the next byte or two) or the trickle ended."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path == "/huge":
            self.send_header("Content-Length", str(60_000_000))
            self.end_headers()
            return
        if self.path == "/trickle":
            self.send_header("Content-Length", "1000")
            self.end_headers()
            started = time.monotonic()
            try:
                while time.monotonic() - started < self.TRICKLE_S:
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                pass
            finally:
                self.trickles.append(time.monotonic() - started)
            return
        self.end_headers()
        end = time.monotonic() + 6
        while time.monotonic() < end:
            try:
                self.wfile.write(b"\0" * 65536)
            except OSError:
                return


@pytest.fixture(scope="module")
def hostile():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


HANG_UP_MARGIN_S = 3.0
"""Time a download may outlast its deadline on the server's clock: the server notices a hang-up only at its next
byte or two (0.3 s apart), and a busy machine delays both sides. A download without a deadline lasts the whole
trickle (TRICKLE_S)."""


def _trickles_since(before: int) -> list[float]:
    """The /trickle downloads that ended after the first `before` ones (waiting for the server to notice)."""
    end = time.monotonic() + _Hostile.TRICKLE_S + 5
    while len(_Hostile.trickles) <= before and time.monotonic() < end:
        time.sleep(0.05)
    return _Hostile.trickles[before:]


def test_a_trickling_download_fails_within_its_deadline(hostile):
    """One deadline for the whole download: no single read waits 1 s, yet the download stops at 1 s."""
    before = len(_Hostile.trickles)
    with pytest.raises(MmtokError, match="not complete within 1 s"):
        fetch_image(f"{hostile}/trickle", timeout=1.0)
    (lasted,) = _trickles_since(before)
    assert lasted < 1.0 + HANG_UP_MARGIN_S


def test_downloads_over_the_size_cap_are_refused(hostile):
    # /huge sends no body: only its Content-Length can name the size. /endless never ends: the limit stops it.
    with pytest.raises(MmtokError, match="is 60.0 MB, over the 50 MB download limit"):
        fetch_image(f"{hostile}/huge")
    with pytest.raises(MmtokError, match="more than the 1 MB download limit"):
        fetch_image(f"{hostile}/endless", max_bytes=1_000_000)


def test_a_slow_url_fails_its_item_alone_and_the_batch_goes_on(tiny_llava, data, hostile, tmp_path):
    rows = [
        {"id": "a", "image": str(data / "img0.png"), "question": "what?"},
        {"id": "slow", "image": f"{hostile}/trickle", "question": "what?"},
        {"id": "b", "image": str(data / "img1.png"), "question": "what?"},
    ]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    before = len(_Hostile.trickles)
    result = run("batch", questions, "--model", tiny_llava, "--download-timeout", "1", "--max-new-tokens", "2",
                 "--batch-size", "3")
    assert result.exit_code == 1  # one item failed
    recs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in recs] == ["a", "slow", "b"]
    for neighbour in (recs[0], recs[2]):  # answered, in the same batch as the slow item
        assert neighbour["error"] is None and isinstance(neighbour["answer"], str)
        assert neighbour["vision_tokens"]["kept"] > 0
    assert "not complete within 1 s" in recs[1]["error"]
    # the download itself (not the run, which loads a model) stopped at its deadline
    lasted = _trickles_since(before)
    assert lasted and all(t < 1.0 + HANG_UP_MARGIN_S for t in lasted), lasted
    bad = run("batch", questions, "--model", tiny_llava, "--download-timeout", "0")
    assert bad.exit_code == 2 and one_error_line(bad)


# -- decoded size --------------------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 144-Mpixel PNG of one colour: 420 KB on disk, 432 MB decoded."""
    return _png(12000, 12000)


def test_images_over_the_pixel_cap_are_refused_from_their_header(bomb):
    with pytest.raises(MmtokError, match="144 Mpixel, over the 40 Mpixel limit"):
        _decode(io.BytesIO(bomb), "bomb.png")
    # its first 41 bytes (the signature, IHDR and the first pixel chunk's header, not one byte of pixel data) get
    # the same refusal: it comes from the header, nothing is decoded first
    assert bomb[37:41] == b"IDAT"
    with pytest.raises(MmtokError, match="144 Mpixel, over the 40 Mpixel limit"):
        _decode(io.BytesIO(bomb[:41]), "bomb.png")


def test_huge_images_are_decoded_no_larger_than_needed():
    buffer = io.BytesIO()
    Image.new("RGB", (9000, 6000), (200, 30, 30)).save(buffer, "JPEG")
    image = _decode(io.BytesIO(buffer.getvalue()), "big.jpg")  # 54 Mpixel as stored: JPEG draft decodes less
    assert max(image.size) == MAX_SIDE and image.size[0] / image.size[1] == pytest.approx(1.5, abs=0.01)
    assert _decode(io.BytesIO(_png(5000, 1000)), "wide.png").size == (MAX_SIDE, round(1000 * MAX_SIDE / 5000))


def _batch_peak_rss(questions: Path, model: Path, batch_size: int) -> tuple[int, int, list[dict]]:
    """`mmtok batch` in a fresh child: its peak RSS in KB (a probe process in between, so peaks do not mix), its
    exit status and its records."""
    out = questions.with_name("answers.jsonl")
    probe = (
        "import resource, subprocess, sys; "
        "p = subprocess.run([sys.executable, '-m', 'mmtok_cli', 'batch', sys.argv[1], '--model', sys.argv[2], "
        "'--batch-size', sys.argv[3], '--max-new-tokens', '1', '--out', sys.argv[4]]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(questions), str(model), str(batch_size), str(out)],
                          capture_output=True, text=True, timeout=300, check=True)
    peak_kb, code = (int(v) for v in done.stdout.split())
    return peak_kb, code, [json.loads(line) for line in out.read_text().splitlines()]


@cpu_only  # host RSS; a CUDA context alone would change it
def test_a_batch_of_bombs_stays_within_the_memory_bound(tiny_llava, tmp_path, bomb):
    """Three 144-Mpixel PNGs (420 KB each) in one batch: error records, and a peak far below what decoding costs."""
    rows = []
    for i in range(3):
        (tmp_path / f"bomb{i}.png").write_bytes(bomb)
        rows.append({"id": i, "image": f"bomb{i}.png", "question": "what?"})
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    peak_kb, code, recs = _batch_peak_rss(questions, tiny_llava, 3)
    assert code == 1 and all("over the 40 Mpixel limit" in r["error"] for r in recs) and len(recs) == 3
    assert peak_kb < 1_500_000, f"peak RSS {peak_kb / 1e6:.2f} GB"  # decoding them would take 3 x 432 MB and more


@cpu_only  # host RSS; a CUDA context alone would change it
def test_the_largest_accepted_images_stay_within_the_loaders_bound(tiny_llava, tmp_path):
    """Six 40-Mpixel PNGs at batch size 6 (`benchmarks/memory.py`, smaller): originals let go once preprocessed, the
    rest bounded in bytes. Before, the loader held every one of them and decoded four at once: over 2 GB."""
    side = math.isqrt(MAX_PIXELS)
    ramp = Image.linear_gradient("L").resize((side, side))
    Image.merge("RGB", (ramp, ramp.rotate(90), ramp)).save(tmp_path / "largest.png")
    questions = write_jsonl(tmp_path / "q.jsonl", [{"image": "largest.png", "question": "what?"}] * 6)
    peak_kb, code, recs = _batch_peak_rss(questions, tiny_llava, 6)
    assert code == 0 and len(recs) == 6 and all(r["error"] is None for r in recs)
    assert peak_kb < 1_500_000, f"peak RSS {peak_kb / 1e6:.2f} GB"


# -- JSONL, resume -------------------------------------------------------------------------------------


def test_a_byte_order_mark_is_accepted_in_batch_and_eval(tiny_llava, data, tmp_path):
    bom = b"\xef\xbb\xbf"
    questions = write_jsonl(tmp_path / "q.jsonl", [{"id": "x", "image": str(data / "img0.png"), "question": "q?"}],
                            prefix=bom)
    result = run("batch", questions, "--model", tiny_llava, "--max-new-tokens", "1")
    rec = json.loads(result.stdout)
    assert result.exit_code == 0 and rec["id"] == "x" and rec["error"] is None
    labelled = write_jsonl(tmp_path / "l.jsonl", [{"image": "img0.png", "question": "q?", "answer": "yes"}],
                           prefix=bom)
    items, _ = load_labelled(labelled)
    assert items[0].extra["answer"] == "yes"


def test_resume_with_duplicate_ids_keeps_every_line(tiny_llava, data, tmp_path):
    rows = [{"id": ident, "image": str(data / f"img{i % 3}.png"), "question": f"question {i}?"}
            for i, ident in enumerate(["a", "a", "b", "a"])]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out.jsonl"
    common = ["--model", tiny_llava, "--max-new-tokens", "2", "--batch-size", "1"]
    first = run("batch", write_jsonl(tmp_path / "head.jsonl", rows[:2]), "--out", out, *common)
    assert first.exit_code == 0 and "appears more than once" in first.stderr
    again = run("batch", questions, "--out", out, "--resume", *common)
    assert again.exit_code == 0 and again.stderr.count("appears more than once") == 1
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["question"]) for r in recs] == [(r["id"], r["question"]) for r in rows]


def test_retry_errors_never_drops_an_error_record_it_cannot_attribute(tiny_llava, data, tmp_path):
    rows = [{"id": "a", "image": str(data / "img0.png"), "question": "q?"},
            {"id": "a", "image": str(tmp_path / "missing.png"), "question": "q?"}]
    questions = write_jsonl(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out.jsonl"
    common = ["--model", tiny_llava, "--max-new-tokens", "1"]
    assert run("batch", questions, "--out", out, *common).exit_code == 1
    again = run("batch", questions, "--out", out, "--resume", "--retry-errors", *common)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert again.exit_code == 0 and len(recs) == 2 and recs[1]["error"] is not None


# -- config files --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,message",
    [
        (b"tokens: true\n", "'tokens' in"),
        (b"model: [1, 2]\n", "must be a string, not a list"),
        (b"alpha: yes\n", "must be a number, not true"),
        (b"model: \xff\xfe\n", "is not UTF-8"),
        (b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
            .encode() for i in range(9)), "YAML alias"),
        (b"# " + b"x" * 70_000 + b"\n", "over 64 KB"),
    ],
)
def test_bad_config_files_are_one_line_usage_errors(tmp_path, content, message):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    result = run("ask", "x.png", "q", "--config", config)
    assert result.exit_code == 2 and one_error_line(result) and message in result.stderr, result.stderr
    assert str(config) in result.stderr


def test_config_with_a_byte_order_mark_and_right_types_is_read(tmp_path, image_file):
    config = tmp_path / "c.yaml"
    config.write_bytes(b"\xef\xbb\xbftokens: 0\nalpha: 1\n")  # int for a float is fine; tokens 0 is then refused
    result = run("ask", image_file, "q", "--config", config, "--model", "no/such-model")
    assert result.exit_code == 2 and "--tokens must be at least 1" in result.stderr


# -- error output --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["ask", "--bogus"], "No such option: --bogus"),
        (["ask", "x.png", "q", "--tokens", "abc"], "'--tokens'"),
        (["batch"], "Missing argument"),
    ],
)
def test_parser_errors_are_one_line(args, message):
    result = run(*args)
    assert result.exit_code == 2 and one_error_line(result) and message in result.stderr, result.stderr


def test_a_device_this_machine_lacks_is_a_one_line_error(image_file):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = run("ask", image_file, "q", "--device", "mps", "--model", "demo")
    assert result.exit_code == 2 and one_error_line(result) and "--device mps" in result.stderr


def test_the_console_script_prints_one_line_too():
    out = subprocess.run([sys.executable, "-m", "mmtok_cli", "ask", "--bogus"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and out.stderr.strip() == "error: No such option: --bogus (see mmtok ask --help)"
