"""Time `mmtok_cli.selection.select` on random tensors of real sizes.

    python benchmarks/selection.py --n 576 --k 64 --m 10 --batch 1,16 [--device cuda] [--json out.json]

Reports median and interquartile spread per image over repeats (warm-up excluded). Random
tensors are faithful here: the work done does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mmtok_cli.selection import select


def bench(n: int, k: int, m: int, batch: int, d: int, e: int, device: str, warmup: int, repeats: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    V = torch.randn(batch, n, d, generator=g).to(device)
    U = torch.randn(batch, n, e, generator=g).to(device)
    T = torch.randn(batch, m, d, generator=g).to(device)
    times = []
    for i in range(warmup + repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        select(V, U, T, k=k)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=576, help="vision tokens per image")
    parser.add_argument("--k", type=int, default=64, help="tokens kept")
    parser.add_argument("--m", type=int, default=10, help="question content tokens")
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--d", type=int, default=4096, help="LLM width (V, T)")
    parser.add_argument("--e", type=int, default=1024, help="vision width (U)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", metavar="PATH", help="also write the rows (and the settings) to this JSON file")
    args = parser.parse_args()

    print(f"torch {torch.__version__} · {args.device} · threads {torch.get_num_threads()} · {platform.processor() or platform.machine()}")
    print(f"n={args.n} k={args.k} m={args.m} d={args.d} e={args.e}, float32 inputs")
    print(f"{'batch':>5}  {'ms/batch (median)':>17}  {'ms/image':>8}  {'IQR ms/batch':>14}")
    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        t = bench(args.n, args.k, args.m, batch, args.d, args.e, args.device, args.warmup, args.repeats)
        q = statistics.quantiles(t, n=4)
        med = statistics.median(t)
        print(f"{batch:>5}  {med:>17.2f}  {med / batch:>8.2f}  {q[0]:>6.2f}-{q[2]:<7.2f}")
        rows.append({"batch": batch, "ms_per_batch": round(med, 4), "ms_per_image": round(med / batch, 4),
                     "iqr_ms_per_batch": [round(q[0], 4), round(q[2], 4)]})
    if args.json:
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
        settings = {k: getattr(args, k) for k in ("n", "k", "m", "d", "e", "device", "warmup", "repeats")}
        with open(args.json, "w") as f:
            json.dump({**settings, "device_name": device_name, "torch": torch.__version__, "inputs": "float32",
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
