"""`mmtok batch --ray`: a local Ray instance with two CPU workers gives the local run's records."""

import json

from typer.testing import CliRunner

from mmtok_cli.cli import app

from .device import TEST_DEVICE
from .test_batch import BROKEN, images, records, write_jsonl  # noqa: F401  (images is a fixture)

runner = CliRunner()
TIMINGS = ("timings_ms", "speedup")


def comparable(recs: list[dict]) -> list[dict]:
    """Records without what depends on the clock (measured times and speedups) or on which process answered them
    (`vision_tokens.cached`: each Ray actor has its own cache, and its blocks are not the local run's batches)."""
    return [{k: _uncached(v) if k == "vision_tokens" else v for k, v in r.items() if k not in TIMINGS} for r in recs]


def _uncached(tokens: dict | None) -> dict | None:
    return tokens if tokens is None else {k: v for k, v in tokens.items() if k != "cached"}


def test_ray_two_workers_equal_local_run(tiny_llava, images, tmp_path):  # noqa: F811
    lines = [{"id": f"q{i}", "image": f"img{i % 5}.png", "question": "what is in this image ?",
              "tokens": [3, 8, 64][i % 3], "meta": i} for i in range(14)]
    lines[4:4] = BROKEN[:3] + [{"image": "missing.png", "question": "what ?"}]
    data = write_jsonl(images / "ray.jsonl", lines)
    common = [str(data), "--model", str(tiny_llava), "--max-new-tokens", "4", "--batch-size", "2",
              "--device", TEST_DEVICE, "--dtype", "float32"]

    local = runner.invoke(app, ["batch", *common])
    out = tmp_path / "ray.jsonl"
    distributed = runner.invoke(app, ["batch", *common, "--out", str(out), "--ray", "--workers", "2"])

    assert local.exit_code == distributed.exit_code == 1, distributed.stderr
    assert len(records(local.stdout)) == 18
    assert comparable(records(out.read_text())) == comparable(records(local.stdout))
    assert "18 items: 14 ok, 4 failed" in distributed.stderr

    # --resume on the Ray path: nothing left to do, nothing written twice.
    again = runner.invoke(app, ["batch", *common, "--out", str(out), "--ray", "--workers", "2", "--resume"])
    assert again.exit_code == 0, again.stderr
    assert len(records(out.read_text())) == 18
    assert json.loads(out.read_text().splitlines()[0])["id"] == "q0"


def test_ray_options_need_ray(tiny_llava, tmp_path):
    data = write_jsonl(tmp_path / "q.jsonl", [{"image": "x.png", "question": "q"}])
    result = runner.invoke(app, ["batch", str(data), "--workers", "2", "--model", str(tiny_llava)])
    assert result.exit_code == 2 and "--ray" in result.stderr


def test_worker_that_cannot_load_the_model_gives_error_records(tiny_llava, images, tmp_path):  # noqa: F811
    """The driver only checks config.json; a node missing the rest fails per item, not with a Ray traceback."""
    broken = tmp_path / "config-only"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_llava / "config.json").read_text())
    data = write_jsonl(images / "ray-broken.jsonl", [{"image": "img0.png", "question": "what ?"}] * 3)
    result = runner.invoke(app, ["batch", str(data), "--model", str(broken), "--ray", "--device", TEST_DEVICE])
    assert result.exit_code == 1
    recs = records(result.stdout)
    assert len(recs) == 3 and all("Ray worker could not load the model" in r["error"] for r in recs)
    assert "Traceback" not in result.stderr
