"""Merge the stage outputs of benchmarks/gpu.sh into OUT/gpu.json and a markdown table OUT/gpu.md.

    python benchmarks/gpu_summary.py OUT [--total-s SECONDS]

Reads OUT/env.json, OUT/tests.xml (junit) and OUT/raw/: stages.jsonl, selection-*.json, profile-*.json,
cache.json and each stage's log (the last lines of a stage that did not succeed go into gpu.json).
A row whose stage did not run says why (skipped (no CUDA), timeout, failed) instead of a number.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

SELECTION = [("selection-576", 1, "selection 576->64, batch 1"), ("selection-576", 32, "selection 576->64, batch 32"),
             ("selection-2880", 1, "selection 2880->160 (d 5120), batch 1")]
PROFILES = ["llava-1.5-7b", "llava-v1.6-vicuna-13b", "qwen2.5-vl-7b"]


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tests(path: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def _why(stage: dict | None) -> str:
    if stage is None:
        return "not run"
    if stage["status"] == "skipped":
        return f"skipped ({stage['reason']})"
    return f"{stage['status']} (rc {stage['rc']})"


def summarise(out: Path, total_s: float | None) -> tuple[dict, str]:
    raw = out / "raw"
    stages = {}
    for line in (raw / "stages.jsonl").read_text().splitlines() if (raw / "stages.jsonl").exists() else []:
        row = json.loads(line)
        if row["status"] in ("failed", "timeout") and (raw / f"{row['stage']}.log").exists():
            row["log_tail"] = (raw / f"{row['stage']}.log").read_text(errors="replace").splitlines()[-30:]
        stages[row["stage"]] = row
    env = _load(out / "env.json") or {}
    summary: dict[str, Any] = {"env": env, "stages": list(stages.values()), "total_s": total_s,
                               "tests": _tests(out / "tests.xml")}
    for name in ("selection-576", "selection-2880", "cache", *(f"profile-{a}" for a in PROFILES)):
        summary[name] = _load(raw / f"{name}.json")

    lines = ["# mmtok GPU check", ""]
    device = env.get("device_name") or env.get("nvidia_smi") or "no CUDA device"
    lines += [f"{device} · torch {env.get('torch')} · transformers {env.get('transformers')}"
              + (f" · dry run: {env['dry_reason']}" if env.get("dry") else ""), ""]
    lines += ["| row | value |", "| --- | --- |"]
    tests = summary["tests"]
    if tests:
        passed = tests["tests"] - tests["failures"] - tests["errors"] - tests["skipped"]
        value = f"{passed} passed, {tests['failures']} failed, {tests['errors']} errors, {tests['skipped']} skipped"
        if stages.get("tests", {}).get("status") not in (None, "ok"):
            value += f"; {_why(stages['tests'])}"
    else:
        value = _why(stages.get("tests"))
    lines.append(f"| tests, MMTOK_TEST_DEVICE=cuda | {value} |")
    for name, batch, label in SELECTION:
        rows = {r["batch"]: r for r in (summary[name] or {}).get("rows", [])}
        value = f"{rows[batch]['ms_per_image']:.3f} ms/image" if batch in rows else _why(stages.get(name))
        lines.append(f"| {label} | {value} |")
    for arch in PROFILES:
        report = summary[f"profile-{arch}"]
        if not report:
            lines.append(f"| profile {arch} | {_why(stages.get(f'profile-{arch}'))} |")
            continue
        for r in report["results"]:
            if r.get("error"):
                value = f"error: {r['error']}"
            else:
                speedup = "" if r["tokens"] == "full" else f", speedup {r['speedup']}x vs full"
                value = (f"{r['end_to_end_ms']:.1f} ms/item end to end, {r['items_per_s']} items/s{speedup}, "
                         f"vision {r['vision_tokens']['kept']}/{r['vision_tokens']['total']}")
            lines.append(f"| profile {arch}, {report['dtype']}, tokens {r['tokens']}, batch {r['batch_size']} "
                         f"| {value} |")
    cache = summary["cache"]
    if cache:
        flat = {k: v for k, v in cache.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        lines.append(f"| cache on/off, llava-1.5-7b | {json.dumps(flat)[:400]} |")
    else:
        lines.append(f"| cache on/off, llava-1.5-7b | {_why(stages.get('cache'))} |")
    lines += ["", "| stage | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['stage']} | {'ok' if s['status'] == 'ok' else _why(s)} | {s['seconds']} |"
              for s in stages.values()]
    if total_s is not None:
        lines.append(f"| total | | {total_s} |")
    return summary, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--total-s", type=float)
    args = parser.parse_args()
    summary, table = summarise(args.out, args.total_s)
    (args.out / "gpu.json").write_text(json.dumps(summary, indent=1))
    (args.out / "gpu.md").write_text(table)


if __name__ == "__main__":
    main()
