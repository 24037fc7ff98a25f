"""Load on `mmtok serve` against offline `mmtok batch` on the same items, measured in one run.

    python benchmarks/serve.py --model demo --items 64 --json serve-demo.json
    python benchmarks/serve.py --arch cpu-small --items 32 --max-tokens 8 --json serve-cpu-small.json

Starts a real server (`python -m mmtok_cli serve`, a subprocess on a free 127.0.0.1 port, --max-batch-size 16)
and drives it with the official async `openai` client: for each method (`mmtok` at --tokens, and `full`) and each
concurrency (1, 4, 16 clients, each sending its next request as soon as the last is answered), all --items
requests, streamed (stream_options.include_usage) so that the time to the first token is seen. Reports requests/s,
p50/p99 latency (request sent to last byte) and p50/p99 time to first token (to the first chunk with text).
Configurations run round-robin within each repeat (load changes hit all alike); medians over --repeats.

Then the server is stopped and the same items run offline through `BatchRunner` (the code behind
`mmtok batch --batch-size 16`) on an engine loaded in this process, for each method. Two ratios answer the
issue's targets: server requests/s at concurrency 16 / offline items/s (the server's overhead; target >= 0.85),
and (server mmtok/full at concurrency 16) / (offline mmtok/full) (does the server keep pruning's gain; target
>= 0.9). The client runs on the same machine as the server (its CPU time is in the server's numbers).

Images go as data URLs (encoded once, before timing). Decoding is greedy, so server and offline answer alike and
do the same work; with --arch the random weights rarely emit an end of sequence, so every answer is --max-tokens
long.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's server harness
from tests.serving import Served, data_url, user

SAMPLES = ROOT / "sample_images"
QUESTIONS = ["Is there a red circle?", "What colour is the square?", "How many circles are there?",
             "Describe the image.", "What is in this image?"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def items(n: int) -> list[tuple[Path, str]]:
    pictures = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return [(pictures[i % len(pictures)], QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def start_server(args: argparse.Namespace) -> Served:
    """The server under test: the test suite's `Served` (a subprocess, ready once /health says 200)."""
    model = ["--arch", args.arch] if args.arch else ["--model", args.model]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return Served(*model, "--device", args.device, "--dtype", args.dtype, "--max-batch-size", str(args.batch_size),
                  "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue", "1024", "--max-request-tokens",
                  str(args.max_tokens), "--max-new-tokens", str(args.max_tokens), "--cache-mb", str(args.cache_mb),
                  timeout=args.start_timeout)


async def load(url: str, name: str, work: list[tuple[str, str]], *, concurrency: int, method: str, tokens: int,
               max_tokens: int) -> dict[str, object]:
    """All `work` through `concurrency` closed-loop clients: wall time and each request's latency and TTFT."""
    import openai

    latencies, firsts = [], []
    queue = list(reversed(work))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=3600) as client:

        async def worker() -> None:
            while queue:
                image, question = queue.pop()
                messages = user(image, question)
                sent = time.perf_counter()
                first = None
                stream = await client.chat.completions.create(
                    model=name, messages=messages, max_tokens=max_tokens, stream=True,
                    stream_options={"include_usage": True}, extra_body={"mmtok": {"tokens": tokens, "method": method}})
                async for chunk in stream:
                    if first is None and (chunk.usage is not None or chunk.choices and (
                            chunk.choices[0].delta.content or chunk.choices[0].finish_reason)):
                        first = time.perf_counter()
                done = time.perf_counter()
                latencies.append(done - sent)
                firsts.append((first or done) - sent)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"requests_per_s": len(work) / wall, "latency_p50_s": percentile(latencies, 50),
            "latency_p99_s": percentile(latencies, 99), "ttft_p50_s": percentile(firsts, 50),
            "ttft_p99_s": percentile(firsts, 99)}


def offline(args: argparse.Namespace, work: list[tuple[Path, str]], methods: list[str]) -> dict[str, list[float]]:
    """items/s of `BatchRunner` (what `mmtok batch` runs) on the same items, per method, over the repeats."""
    from mmtok_cli.batch import BatchOptions, BatchRunner
    from mmtok_cli.engine import Engine
    from mmtok_cli.io import Item

    if args.arch:
        from mmtok_cli.profile import load_arch

        engine = load_arch(args.arch, device=args.device, dtype=args.dtype)
    else:
        engine = Engine(args.model, device=args.device, dtype=args.dtype)
    rows = [Item(line=i + 1, id=i, image=str(path), question=question) for i, (path, question) in enumerate(work)]
    rates: dict[str, list[float]] = {m: [] for m in methods}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for method in methods:
            options = BatchOptions(tokens=args.tokens, method=method, max_new_tokens=args.max_tokens,
                                   batch_size=args.batch_size)
            engine.set_cache(args.cache_mb)  # as the server's, emptied for each run (the server's stays warm)
            summary = BatchRunner(engine, options).run([Item(**vars(r)) for r in rows], lambda records: None)
            if summary.failed:
                raise SystemExit(f"offline {method}: {summary.failed} items failed")
            if repeat:
                rates[method].append(summary.items_per_s)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="checkpoint (hub id, folder or demo)")
    which.add_argument("--arch", help="architecture with random weights (mmtok profile --arch), e.g. cpu-small")
    parser.add_argument("--items", type=int, default=64, help="requests per configuration (and offline items)")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--tokens", type=int, default=64, help="the pruned configuration's vision tokens")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="server --max-batch-size and offline --batch-size")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cache-mb", type=int, default=0, help="the vision-token cache of both (0: none, so both "
                        "encode every image; the items repeat the sample images)")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args()

    levels = [int(c) for c in args.concurrency.split(",")]
    methods = ["mmtok", "full"]
    work = items(args.items)
    urls = [(data_url(path), question) for path, question in work]
    name = args.arch or args.model

    server = start_server(args)
    runs: dict[tuple[str, int], list[dict[str, object]]] = {(m, c): [] for m in methods for c in levels}
    try:
        for repeat in range(args.repeats + 1):  # the first round warms up (and fills the server's image cache)
            for method in methods:
                for concurrency in levels:
                    result = asyncio.run(load(server.url, name, urls, concurrency=concurrency, method=method,
                                              tokens=args.tokens, max_tokens=args.max_tokens))
                    if repeat:
                        runs[(method, concurrency)].append(result)
                        print(f"repeat {repeat} {method:>5} c={concurrency:<3} {result['requests_per_s']:.2f} req/s",
                              file=sys.stderr)
    finally:
        server.stop()
    rates = offline(args, work, methods)

    rows = []
    for (method, concurrency), results in runs.items():
        rows.append({"method": method, "tokens": args.tokens if method == "mmtok" else "all",
                     "concurrency": concurrency,
                     **{k: round(statistics.median(r[k] for r in results), 4) for k in results[0]},
                     "requests_per_s_spread": [round(min(r["requests_per_s"] for r in results), 4),
                                               round(max(r["requests_per_s"] for r in results), 4)]})
    offline_rate = {m: statistics.median(v) for m, v in rates.items()}
    top = max(levels)
    served = {m: next(r["requests_per_s"] for r in rows if r["method"] == m and r["concurrency"] == top)
              for m in methods}
    ratios = {
        f"server_c{top}_over_offline_{m}": round(served[m] / offline_rate[m], 3) for m in methods
    }
    ratios[f"server_pruned_over_full_c{top}"] = round(served["mmtok"] / served["full"], 3)
    ratios["offline_pruned_over_full"] = round(offline_rate["mmtok"] / offline_rate["full"], 3)
    ratios["pruning_gain_kept"] = round(ratios[f"server_pruned_over_full_c{top}"] / ratios["offline_pruned_over_full"], 3)

    import torch
    import transformers

    report = {
        "model": name, "items": args.items, "tokens": args.tokens, "max_tokens": args.max_tokens,
        "batch_size": args.batch_size, "batch_wait_ms": args.batch_wait_ms, "repeats": args.repeats,
        "device": args.device, "dtype": args.dtype, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "server": rows, "offline_items_per_s": {m: round(v, 4) for m, v in offline_rate.items()},
        "offline_items_per_s_runs": {m: [round(x, 4) for x in v] for m, v in rates.items()}, "ratios": ratios,
    }
    print(f"{'method':>6} {'conc':>4} {'req/s':>8} {'p50 s':>7} {'p99 s':>7} {'ttft50':>7} {'ttft99':>7}")
    for r in rows:
        print(f"{r['method']:>6} {r['concurrency']:>4} {r['requests_per_s']:>8.2f} {r['latency_p50_s']:>7.2f} "
              f"{r['latency_p99_s']:>7.2f} {r['ttft_p50_s']:>7.2f} {r['ttft_p99_s']:>7.2f}")
    print(f"offline (mmtok batch --batch-size {args.batch_size}): "
          + ", ".join(f"{m} {v:.2f} items/s" for m, v in offline_rate.items()))
    print(json.dumps(ratios))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
