"""Video measurements for BENCHMARKS.md (issue 23, item 7), each one run, ratios from that run.

    python benchmarks/video.py speed     [--archs cpu-small-qwen2.5,cpu-small-qwen3-vl,cpu-small-qwen3.5] [--frames 16]
    python benchmarks/video.py selection [--frames 16] [--shares 0.25,0.1,0.05]
    python benchmarks/video.py decode    [--seconds 60] [--fps 30] [--size 1280x720] [--frames 16]
    python benchmarks/video.py all --json benchmarks/results/video.json

speed: `mmtok profile --video-frames` per video family's cpu-small preset (real widths, 2 + 2 layers, random
weights): a generated 16-frame 448 x 448 clip at full and at 25%, 10% and 5% of its vision tokens; end-to-end
speedups over full from the same run.
selection: the selection step alone on a Qwen2.5-VL-7B-sized video (16 frames at 448 px: 8 temporal grids of
256 merged tokens, V 3584 wide, U 1280), mmtok (`--budget total`, per grid, and `global`) vs evs vs uniform,
as the adapter runs them (`Adapter.select`).
decode: what reading the sampled frames costs against every frame: a generated H.264 file (key frame every 2 s),
mmtok's reader (`video.decode`: seeks to the key frame before each far frame) vs a full decode with PyAV vs
transformers' `read_video_pyav` (decodes every frame up to the last one sampled) for the same frames.

Needs the `video` extra (torchvision for the processors, PyAV). Run on a quiet machine; CPU by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

VIDEO_ARCHS = ("cpu-small-qwen2.5", "cpu-small-qwen3-vl", "cpu-small-qwen3.5")


def _median(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def speed(archs: list[str], frames: int, shares: list[float], repeats: int, device: str) -> list[dict[str, Any]]:
    from mmtok_cli.profile import default_video, load_arch, profile

    rows = []
    for arch in archs:
        engine = load_arch(arch, device=device, dtype="auto")
        prepared = engine.prepare([default_video(frames)], ["q"])
        total = engine.adapter.encode(prepared).counts[0]
        budgets = [max(1, round(total * share)) for share in shares]
        report = profile(engine, budgets=["full", *budgets], new_tokens=8, warmup=1, repeats=repeats,
                         video_frames=frames)
        for row in report["results"]:
            share = None if row["tokens"] == "full" else round(row["tokens"] / total, 3)
            rows.append({"arch": arch, "total": total, "tokens": row["tokens"], "share": share,
                         "end_to_end_ms": row.get("end_to_end_ms"), "stages_ms": row.get("stages_ms"),
                         "speedup": row.get("speedup"), "prompt_tokens": row.get("prompt_tokens")})
            print(f"{arch:20} {str(row['tokens']):>5} ({share or 1:.0%} of {total}) "
                  f"end-to-end {row.get('end_to_end_ms', 0):9.1f} ms  speedup {row.get('speedup') or 1:.2f}x")
        del engine
    return rows


def selection(frames: int, shares: list[float], repeats: int, device: str) -> list[dict[str, Any]]:
    """The adapter's selection on random tensors shaped like Qwen2.5-VL-7B's tokens of a 448-px clip."""
    from mmtok_cli.models.base import VisionTokens
    from mmtok_cli.models.qwen_vl import QwenVLAdapter

    grids, per_grid, d, e, m = frames // 2, 256, 3584, 1280, 10
    n = grids * per_grid
    g = torch.Generator().manual_seed(0)
    V = torch.randn(1, n, d, generator=g).to(device)
    U = torch.randn(1, n, e, generator=g).to(device)
    T = torch.randn(1, m, d, generator=g).to(device)
    mask = torch.ones(1, n, dtype=torch.bool, device=device)
    parts = torch.arange(grids, device=device).repeat_interleave(per_grid)[None]
    tokens = VisionTokens(vision=V, features=U, mask=mask, allowed=mask, parts=parts,
                          timed=torch.ones_like(mask))
    adapter = QwenVLAdapter.__new__(QwenVLAdapter)  # `select` reads nothing of the model
    rows = []
    for share in shares:
        k = max(1, round(n * share))
        for method, budget in (("mmtok", "total"), ("mmtok", "global"), ("evs", "total"), ("uniform", "total")):
            times = []
            for i in range(2 + repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                adapter.select(tokens, T, torch.ones(1, m, dtype=torch.bool, device=device), [k], method=method,
                               budget=budget, alpha=0.5, tau_t=0.01, tau_v=0.2)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i >= 2:
                    times.append((time.perf_counter() - start) * 1e3)
            rows.append({"n": n, "k": k, "share": share, "method": method, "budget": budget, "ms": _median(times)})
            print(f"n={n} k={k:5} {method:8} {budget:7} {statistics.median(times):9.2f} ms")
    return rows


def decode_cost(seconds: int, fps: int, size: tuple[int, int], frames: int, repeats: int) -> dict[str, Any]:
    import av
    import numpy as np
    from transformers.video_utils import read_video_pyav

    from mmtok_cli.video import FrameSampling, decode

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.mp4"
        width, height = size
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps, options={"g": str(2 * fps), "bf": "2"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            ramp = np.linspace(0, 255, width, dtype=np.float32)
            for i in range(seconds * fps):
                pixels = np.empty((height, width, 3), np.uint8)
                pixels[..., 0] = (ramp + 3 * i) % 256
                pixels[..., 1] = (ramp[::-1] + i) % 256
                pixels[..., 2] = (i * 7) % 256
                container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            container.mux(stream.encode())
        sampled = decode(path, FrameSampling(frames=frames, max_frames=frames))

        def ours() -> Any:
            return decode(path, FrameSampling(frames=frames, max_frames=frames))

        def transformers_pyav() -> Any:
            return read_video_pyav(str(path), lambda metadata, **kw: np.array(sampled.indices))

        def every_frame() -> Any:
            with av.open(str(path)) as container:
                return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

        out: dict[str, Any] = {"file": {"seconds": seconds, "fps": fps, "size": [width, height],
                                        "frames": seconds * fps, "key_frame_every_s": 2},
                               "sampled": frames, "indices": sampled.indices}
        for name, fn in (("mmtok_sampled", ours), ("transformers_read_video_pyav", transformers_pyav),
                         ("pyav_every_frame", every_frame)):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            out[name] = _median(times)
            print(f"{name:30} {statistics.median(times):10.1f} ms")
        same = np.array_equal(ours().frames, np.stack(every_frame())[sampled.indices])
        out["mmtok_frames_equal_full_decode"] = bool(same)
        print(f"mmtok's frames equal the full decode's: {same}")
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "selection", "decode", "all"))
    parser.add_argument("--archs", default=",".join(VIDEO_ARCHS))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--shares", default="0.25,0.1,0.05", help="budgets as shares of the video's tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="PATH", help="write every number (and the settings) to this JSON file")
    args = parser.parse_args()
    shares = [float(s) for s in args.shares.split(",")]
    import transformers

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "device": args.device, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if args.what in ("speed", "all"):
        report["speed"] = speed(args.archs.split(","), args.frames, shares, args.repeats, args.device)
    if args.what in ("selection", "all"):
        report["selection"] = selection(args.frames, shares, max(args.repeats, 5), args.device)
    if args.what in ("decode", "all"):
        width, height = (int(v) for v in args.size.split("x"))
        report["decode"] = decode_cost(args.seconds, args.fps, (width, height), args.frames, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
