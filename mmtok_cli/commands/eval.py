"""`mmtok eval`: every method at every budget on labelled data, scored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import UsageError
from ..options import (
    AGENT_METHODS,
    DEFAULT_MODEL,
    check_agent,
    check_cache,
    check_options,
    check_post_prompt,
    selection_params,
)
from .common import (
    AGENT_HELP,
    METHODS_HELP,
    AgentModelOpt,
    AlphaOpt,
    BudgetOpt,
    CacheOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    MaxNewOpt,
    ModelOpt,
    PanAndScanOpt,
    PostPromptOpt,
    QuestionWordsOpt,
    TauTOpt,
    TauVOpt,
    check_outputs,
    err,
    guarded,
    load_engine,
)
from .config import ConfigOpt


def eval_command(
    data: Annotated[
        list[Path], typer.Argument(metavar="DATA...", help="Labelled JSONL files: image, question and answer per line, "
                                   "or POPE's official files (question_id, image, text, label) with --images. "
                                   "Each file is scored on its own.")
    ],
    tokens: Annotated[str, typer.Option("--tokens", "-k", help="Comma-separated vision-token budgets.")] = "64,16,4",
    methods: Annotated[
        str, typer.Option("--methods", help=f"Comma-separated methods; full always runs once.\n\n{METHODS_HELP}")
    ] = "full,mmtok,random,uniform,divprune",
    model: ModelOpt = DEFAULT_MODEL,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Items per forward pass.")] = 8,
    max_new_tokens: MaxNewOpt = 10,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    images: Annotated[
        Path | None, typer.Option("--images", metavar="DIR", help="Folder the image names in DATA are relative to "
                                  "(default: each file's own folder). Needed for POPE's files, which name bare COCO "
                                  "val2014 files.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results to this JSON file (several DATA files: one report "
                                  "per file under 'files').")
    ] = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Draw the metric against the budget, one line per method and one "
                                  "panel per DATA file, to this PNG (needs matplotlib: pip install 'mmtok-cli[plot]').")
    ] = None,
    predictions_path: Annotated[
        Path | None, typer.Option("--predictions", help="Write every prediction (data, method, tokens, id, answer, "
                                  "prediction, correct, error) to this JSONL file.")
    ] = None,
    agent: Annotated[
        bool, typer.Option("--agent", help="Also run each method that reads the question "
                           f"({', '.join(AGENT_METHODS)}) with the paper's optional agent, as rows labelled "
                           f"METHOD+agent next to the plain ones: {AGENT_HELP}", rich_help_panel="Agent")
    ] = False,
    agent_model: AgentModelOpt = None,
    agent_tokens: Annotated[
        int | None,
        typer.Option("--agent-tokens", metavar="N", help="Vision tokens of the agent's first pass (default: each "
                     "row's budget with the same model, all of them with --agent-model). Needs --agent.",
                     rich_help_panel="Agent"),
    ] = None,
    alpha: AlphaOpt = None,
    tau_t: TauTOpt = None,
    tau_v: TauVOpt = None,
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
    post_prompt: PostPromptOpt = None,
    pan_and_scan: PanAndScanOpt = None,
    cache_mb: CacheOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Score every method at every budget on each DATA file and report how much of the unpruned score each keeps.

    Per file, method and budget: accuracy (normalised exact match; option letters for multiple choice;
    yes/no by the first word), POPE's precision, recall, F1 and yes-ratio over the yes/no items,
    retention (the headline metric over full's: F1 when every item is yes/no, else accuracy), mean
    vision tokens kept and items/s. Runs through the same batch runner as `mmtok batch`, one model for
    all files; items that fail (a missing image) count as wrong and carry their error in --predictions.

    Examples:

      mmtok synth --out synth --n 100

      mmtok eval synth/questions.jsonl --tokens 64,16,4 --methods mmtok,random,divprune --json eval.json

      mmtok eval synth/pope_random.json synth/pope_popular.json synth/pope_adversarial.json --images synth/images

      mmtok eval coco_pope_random.json coco_pope_popular.json --images val2014 --tokens 64,4 --methods mmtok
    """
    from ..evaluate import load_labelled, parse_methods, parse_tokens
    from ..io import RecordWriter

    def work() -> None:
        budgets, chosen = parse_tokens(tokens), parse_methods(methods)
        check_options(tokens=min(budgets), method="mmtok", max_new_tokens=max_new_tokens, dtype=dtype, device=device)
        check_agent(agent=agent, method=None, agent_model=agent_model, agent_tokens=agent_tokens)
        selection = selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                     question_words=question_words)
        if agent and not set(chosen) & set(AGENT_METHODS):
            raise UsageError(f"--agent only changes {' and '.join(AGENT_METHODS)}; add one of them to --methods")
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
        if images is not None and not images.is_dir():
            raise UsageError(f"--images {images} is not a folder")
        check_cache(cache_mb)
        check_post_prompt(post_prompt)
        check_outputs(("--json", json_path), ("--plot", plot_path), ("--predictions", predictions_path),
                       plot=plot_path, inputs=tuple(data))
        sets = [(path, *load_labelled(path, images)) for path in data]  # every file checked before the model loads
        from .. import evaluate as ev

        engine, _ = load_engine(model, device, dtype, agent_model, cache_mb, pan_and_scan)
        sink = RecordWriter(str(predictions_path), append=False, option="--predictions") if predictions_path else None
        reports = []
        try:
            with err.status("evaluating …") as status:
                for path, items, base in sets:
                    name = f"{path.name}: " if len(sets) > 1 else ""
                    report = ev.evaluate(
                        engine, items, methods=chosen, budgets=budgets, base=base, batch_size=batch_size,
                        max_new_tokens=max_new_tokens,
                        progress=lambda text: status.update(f"evaluating: {escape(name + text)}"),
                        predictions=(lambda rows: sink.write([{"data": str(path), **r} for r in rows])) if sink else None,
                        agent=agent, agent_tokens=agent_tokens,
                        selection=selection, post_prompt=post_prompt,
                    )
                    reports.append({"model": engine.model_name, "data": str(path), **report})
        finally:
            if sink:
                sink.close()
        for report in reports:  # first: an output that fails to write (a full disk) must not take the table along
            _print_eval(report)
        if json_path is not None:
            several = {"model": engine.model_name, "files": reports}
            ev.write_json(reports[0] if len(reports) == 1 else several, json_path)
        if plot_path is not None:
            ev.plot(reports, plot_path)

    guarded(debug, work)


def _print_eval(report: dict[str, Any]) -> None:
    from rich.table import Table

    def num(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    table = Table(title=f"{report['model']} · {report['data']} · {report['items']} items",
                  caption=f"retention = {report['metric']} / full's {report['metric']} · "
                  + " · ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in report["selection"].items())
                  + (f"\npost-prompt: {report['post_prompt']}" if report.get("post_prompt") else "")
                  + (f"\n{report['cache']['misses']} images encoded once for all rows (--cache-mb): full's "
                     "items/s pays for encoding them, the other rows' do not" if report.get("cache") else ""))
    columns = ("method", "tokens", "accuracy", "precision", "recall", "F1", "yes-ratio", "retention", "kept",
               "items/s", "failed")
    for name in columns:
        table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
    for r in report["results"]:
        pope = r["pope"] or {}
        table.add_row(r["method"], str(r["tokens"]), num(r["accuracy"]), num(pope.get("precision")),
                      num(pope.get("recall")), num(r["f1"]), num(pope.get("yes_ratio")),
                      num(r["retention"]), "–" if r["mean_kept"] is None else f"{r['mean_kept']:g}",
                      f"{r['items_per_s']:.2f}", str(r["failed"]))
    Console(width=max(Console().width, 130)).print(table)
