"""benchmarks/gpu.sh in dry mode runs to the end on a machine without CUDA; gpu_summary.py reads the stages' files."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA_STAGES = ["tests", "selection-576", "selection-2880", "profile-llava-1.5-7b", "profile-llava-v1.6-vicuna-13b",
               "profile-qwen2.5-vl-7b"]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run_skips_every_cuda_stage_and_writes_the_summary(tmp_path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "DRY": "1",
           "NO_INSTALL": "1", "HOME": str(tmp_path)}  # NO_INSTALL: never pip install into the test's environment
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out)], check=False, capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    for stage in CUDA_STAGES:
        assert f"== {stage}: skipped (no CUDA)" in run.stdout
    assert sorted(p.name for p in out.iterdir()) == ["env.json", "gpu.json", "gpu.md", "raw.tar.gz"]
    summary = json.loads((out / "gpu.json").read_text())
    status = {s["stage"]: (s["status"], s["reason"]) for s in summary["stages"]}
    assert all(status[s] == ("skipped", "no CUDA: DRY=1") for s in CUDA_STAGES)
    assert status["env"][0] == "ok" and summary["env"]["dry"] is True and summary["env"]["torch"]
    table = (out / "gpu.md").read_text()
    assert "dry run: DRY=1" in table
    assert "| selection 576->64, batch 32 | skipped (no CUDA: DRY=1) |" in table
    assert "| profile qwen2.5-vl-7b | skipped (no CUDA: DRY=1) |" in table


def test_summary_puts_each_stage_output_in_its_row(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "selection.py"), "--n", "16", "--k", "4", "--d", "8",
                    "--e", "8", "--m", "3", "--batch", "1,32", "--warmup", "0", "--repeats", "2",
                    "--json", str(raw / "selection-576.json")], check=True, capture_output=True, timeout=120)
    # a real `mmtok profile --json` report (cpu-small, budgets full and 64, batch 1 and 4)
    shutil.copy(ROOT / "benchmarks" / "results" / "cpu-small_64_batch-1-4.json", raw / "profile-llava-1.5-7b.json")
    stages = [{"stage": "selection-576", "status": "ok", "rc": 0, "seconds": 3.0, "reason": ""},
              {"stage": "selection-2880", "status": "timeout", "rc": 124, "seconds": 30.0, "reason": ""}]
    (raw / "stages.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stages))
    (raw / "selection-2880.log").write_text("building\nstill building\n")
    (tmp_path / "tests.xml").write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="1"/>'
                                        "</testsuites>")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"), str(tmp_path), "--total-s", "40"],
                   check=True, timeout=60)
    table = (tmp_path / "gpu.md").read_text()
    selection = json.loads((raw / "selection-576.json").read_text())
    per_image = {r["batch"]: r["ms_per_image"] for r in selection["rows"]}
    assert f"| selection 576->64, batch 32 | {per_image[32]:.3f} ms/image |" in table
    assert "| selection 2880->160 (d 5120), batch 1 | timeout (rc 124) |" in table
    assert "| tests, MMTOK_TEST_DEVICE=cuda | 3 passed, 1 failed, 0 errors, 1 skipped |" in table
    profile = json.loads((raw / "profile-llava-1.5-7b.json").read_text())
    pruned = next(r for r in profile["results"] if r["tokens"] == 64 and r["batch_size"] == 4)
    assert (f"| profile llava-1.5-7b, float32, tokens 64, batch 4 | {pruned['end_to_end_ms']:.1f} ms/item end to "
            f"end, {pruned['items_per_s']} items/s, speedup {pruned['speedup']}x vs full, vision 64/576 |") in table
    summary = json.loads((tmp_path / "gpu.json").read_text())
    assert summary["profile-llava-1.5-7b"] == profile and summary["total_s"] == 40
    assert summary["stages"][1]["log_tail"] == ["building", "still building"]
