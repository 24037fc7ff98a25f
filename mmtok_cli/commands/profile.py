"""`mmtok profile`: every stage's time per budget and batch size, and the speedup over full."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import UsageError
from ..options import DEFAULT_MODEL, check_options, selection_params
from .common import (
    ArchOpt,
    BudgetOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    MethodOpt,
    PanAndScanOpt,
    QuestionWordsOpt,
    check_outputs,
    err,
    guarded,
)
from .config import ConfigOpt


def profile(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help=f"Hub id or local checkpoint folder [default: {DEFAULT_MODEL}]."),
    ] = None,
    arch: ArchOpt = None,
    tokens: Annotated[
        str, typer.Option("--tokens", "-k", help="Comma-separated vision-token budgets; 'full' is always included.")
    ] = "576,192,128,64,32,16,4",
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="Comma-separated batch sizes.")] = "1",
    new_tokens: Annotated[
        int, typer.Option("--new-tokens", help="Generate exactly N tokens per item (EOS ignored); "
                          "decode per token needs N >= 2.")
    ] = 1,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up rounds, not measured.")] = 1,
    repeats: Annotated[int, typer.Option("--repeats", help="Measured rounds; medians and [min, max] reported.")] = 3,
    image: Annotated[
        str | None, typer.Option("--image", help="Image to use (default: a generated 672 x 672 test image).")
    ] = None,
    question: Annotated[str | None, typer.Option("--question", help="Question to ask (default: POPE-style).")] = None,
    video_frames: Annotated[
        int | None,
        typer.Option("--video-frames", metavar="N", help="Ask about a generated 448 x 448 clip of N frames instead of "
                     "the image (video families: Qwen2.5-VL, Qwen3-VL, Qwen3.5; needs the `video` extra)."),
    ] = None,
    method: MethodOpt = "mmtok",
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
    pan_and_scan: PanAndScanOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every number to this JSON file.")] = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Draw speedup and time breakdown per budget to this PNG "
                                  "(needs matplotlib: pip install 'mmtok-cli[plot]').")
    ] = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Measure every stage per vision-token budget and batch size, and the speedup over full.

    Per budget and batch size: image preprocessing, vision encoding, selection, prefill (to the
    first token), decode per token, end-to-end per item, items/s, peak GPU memory and speedup vs
    'full' measured in the same run. Times are ms per item (the item's share of its batch), medians
    over --repeats after --warmup rounds, with [min, max] in the JSON. Configurations run
    round-robin so load changes on a shared machine hit all of them alike.

    Examples:

      mmtok profile --arch cpu-small --tokens 576,64 --json out.json

      mmtok profile --arch llava-1.5-7b --tokens 576,64 --batch-size 1,16 --plot speed.png

      mmtok profile --model llava-hf/llava-1.5-7b-hf --new-tokens 16

      mmtok profile --arch cpu-small-qwen2.5 --video-frames 16 --tokens 512,205,102
    """
    from ..profile import DEFAULT_QUESTION, parse_batch_sizes, parse_budgets

    def work() -> None:
        if model and arch:
            raise UsageError("give --model or --arch, not both")
        budgets, sizes = parse_budgets(tokens), parse_batch_sizes(batch_size)
        check_options(tokens=1, method=method, max_new_tokens=new_tokens, dtype=dtype, device=device)
        conventions = selection_params(alpha=None, tau_t=None, tau_v=None, budget=budget,
                                       question_words=question_words)
        if repeats < 1 or warmup < 0:
            raise UsageError("--repeats must be at least 1 and --warmup at least 0")
        if video_frames is not None and (video_frames < 1 or image is not None):
            raise UsageError("--video-frames takes a number of frames of at least 1, and no --image")
        check_outputs(("--json", json_path), ("--plot", plot_path), plot=plot_path)
        picture = None
        if image is not None:
            from ..io import load_image

            picture = load_image(image)
        from .. import profile as prof

        start = time.perf_counter()
        with err.status(f"building {escape(arch)} with random weights …" if arch else
                        f"loading {escape(model or DEFAULT_MODEL)} …") as status:
            if arch:
                engine = prof.load_arch(arch, device=device, dtype=dtype, pan_and_scan=pan_and_scan)
            else:  # not _load_engine: its own status line cannot nest in this one
                from ..engine import Engine

                engine = Engine(model or DEFAULT_MODEL, device=device, dtype=dtype, pan_and_scan=pan_and_scan)
            load_s = time.perf_counter() - start
            report = prof.profile(
                engine, budgets=budgets, batch_sizes=sizes, new_tokens=new_tokens, warmup=warmup,
                repeats=repeats, image=picture, question=question or DEFAULT_QUESTION,
                progress=lambda text: status.update(f"profiling: {escape(text)}"), method=method,
                video_frames=video_frames, **conventions,
            )
        report["load_s"] = round(load_s, 2)
        report["wall_s"] = round(time.perf_counter() - start, 2)
        _print_profile(report)  # first: an output that fails to write (a full disk) must not take the table along
        if json_path is not None:
            from ..io import write_text

            write_text(json_path, json.dumps(report, indent=2) + "\n", "--json")
        if plot_path is not None:
            prof.plot(report, plot_path)

    guarded(debug, work)


def _print_profile(report: dict[str, Any]) -> None:
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"

    title = (f"{report['model']}{' (random weights)' if report['random_weights'] else ''} · "
             f"{report['device_name']} · {report['dtype']} · {report['new_tokens']} new token(s) · "
             f"median of {report['repeats']}")
    table = Table(title=title, caption="ms per item (share of its batch); speedup = full's end-to-end / this one's")
    for name in ("tokens", "batch", "kept", "preproc", "vision", "select", "prefill", "decode/tok",
                 "end-to-end", "items/s", "peak MB", "speedup"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in report["results"]:
        if "error" in r and "end_to_end_ms" not in r:
            table.add_row(str(r["tokens"]), str(r["batch_size"]), *[""] * 9, r["error"])
            continue
        s = r["stages_ms"]
        table.add_row(
            str(r["tokens"]), str(r["batch_size"]), f"{r['vision_tokens']['kept']}/{r['vision_tokens']['total']}",
            ms(s["preprocess"]), ms(s["vision"]), ms(s["select"]), ms(s["prefill"]), ms(s["decode_per_token"]),
            ms(r["end_to_end_ms"]), f"{r['items_per_s']:.2f}",
            "–" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}",
            "–" if r["speedup"] is None else f"{r['speedup']:.2f}x",
        )
    # Wide enough for every column: a narrow terminal wraps lines rather than cutting numbers short.
    Console(width=max(Console().width, 130)).print(table)
    err.print(f"{report['wall_s']:.1f} s in all ({report['load_s']:.1f} s to load)", style="dim", highlight=False)
