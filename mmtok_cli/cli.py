"""The `mmtok` command: parses options, calls the engine, prints. Nothing else lives here.

Exit status: 0 success, 1 the work failed (unreadable image, model that cannot be loaded, ...),
2 the command line asked for something impossible.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # current Typer ships its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older Typer uses click itself
    from click import ClickException

from . import __version__
from .archs import ARCHS
from .errors import MmtokError, UsageError, first_line
from .options import (
    AGENT_MAX_NEW_TOKENS,
    AGENT_METHODS,
    DEFAULT_MODEL,
    METHOD_HELP,
    METHODS,
    check_agent,
    check_cache,
    check_options,
    selection_params,
)
from .quiet import quiet_libraries

if TYPE_CHECKING:  # the ML stack loads lazily so bad input is rejected fast
    from .batch import Summary
    from .engine import Engine

class _OneLineErrors(TyperGroup):
    """Option-parser errors (unknown option, bad integer, bad config file) as one `error:` line, exit 2, like
    every other mmtok error: a framed panel breaks the one-line-per-failure promise that log scrapers rely on."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `mmtok` alone: the help was printed; click exits 2
                sys.exit(exc.exit_code)
            where = getattr(exc, "ctx", None)
            hint = f" (see {where.command_path} --help)" if where is not None else ""
            err.print(f"[bold red]error:[/] {escape(exc.format_message())}{escape(hint)}", highlight=False)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("[red]aborted[/]")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="mmtok",
    help=(
        "Ask vision-language models about images while the language model reads only a few, "
        "well-chosen vision tokens (MMTok coverage pruning, arXiv 2508.18264)."
    ),
    epilog=(
        "Examples:  mmtok ask photo.jpg \"What is here?\" --tokens 32   ·   "
        "mmtok batch questions.jsonl --out answers.jsonl --batch-size 16   ·   "
        "cat questions.jsonl | mmtok batch - | jq .answer   ·   "
        "exit status 0 ok, 1 failed (batch: some items failed), 2 bad options, 130 Ctrl-C, 141 broken pipe, "
        "143 SIGTERM"
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, soft_wrap=True)  # soft wrap: an error stays one line in logs

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="Hugging Face hub id, local checkpoint folder, or `demo` (the small model shipped with mmtok, "
        "trained on `mmtok synth` scenes). See `mmtok models` for the families.",
        show_default=True,
    ),
]
TokensOpt = Annotated[
    int,
    typer.Option(
        "--tokens", "-k",
        help="Vision tokens the language model sees per image (LLaVA-1.5: of 576; LLaVA-NeXT: in total over "
        "the base view and crops; Qwen-VL: of a number that grows with resolution). A budget >= the image's "
        "tokens keeps them all.",
    ),
]
# One line per method in --help (a markdown list: Typer joins plain lines into one paragraph).
METHODS_HELP = "\n".join(f"- {m}: {METHOD_HELP[m]}" for m in METHODS)
MethodOpt = Annotated[str, typer.Option("--method", help=f"Token selection.\n\n{METHODS_HELP}")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate (greedy decoding).")]
# The environment variables let a whole session (the test suite on a GPU, a shell) pick the device once.
DeviceOpt = Annotated[
    str, typer.Option("--device", envvar="MMTOK_DEVICE", help="auto | cpu | cuda (auto picks cuda when available).")
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype", envvar="MMTOK_DTYPE",
        help="auto | float32 | bfloat16 | float16 (auto: bfloat16 on GPU, float32 on CPU).",
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks and library warnings.")]
CacheOpt = Annotated[
    int | None,
    typer.Option("--cache-mb", metavar="MB", help="Encode each image once: keep images' vision tokens (keyed by "
                 "their pixels) in a cache of at most MB megabytes for later questions about them (default: "
                 "2048 on CPU; on a GPU 4096 or 5% of its memory, whichever is less; halved at each out-of-memory; "
                 "0: no cache). Answers are the same either way; records say vision_tokens.cached."),
]
AGENT_HELP = (
    "a cheap first pass (the same model at --agent-tokens, or --agent-model) answers each question; the words "
    "of that preliminary answer join the question's words that the selection covers, then the vision tokens are "
    "selected again and the real answer is generated. The prompt never contains the preliminary answer. Costs "
    f"an extra generation pass (up to {AGENT_MAX_NEW_TOKENS} tokens), reported as timings_ms.agent; the "
    f"preliminary answer is agent_answer. Only changes the methods that read the question: {', '.join(AGENT_METHODS)}."
)
AgentOpt = Annotated[
    bool, typer.Option("--agent", help=f"The paper's optional agent: {AGENT_HELP}", rich_help_panel="Agent")
]
AgentModelOpt = Annotated[
    str | None,
    typer.Option("--agent-model", metavar="MODEL", help="A second, smaller checkpoint (hub id or folder) for the "
                 "agent's first pass instead of the same model; it reads the image with all its own vision tokens "
                 "unless --agent-tokens is given. Needs --agent.", rich_help_panel="Agent"),
]
AgentTokensOpt = Annotated[
    int | None,
    typer.Option("--agent-tokens", metavar="N", help="Vision tokens of the agent's first pass (default: --tokens "
                 "with the same model, all of them with --agent-model). Needs --agent.", rich_help_panel="Agent"),
]

SELECTION_PANEL = "Selection (MMTok's objective)"
AlphaOpt = Annotated[
    float | None,
    typer.Option("--alpha", help="Weight of the vision-coverage term (Q) against the question term (P) "
                 "(default 0.5, the paper's). 0: cover the question's tokens only.", rich_help_panel=SELECTION_PANEL),
]
TauTOpt = Annotated[
    float | None,
    typer.Option("--tau-t", help="Softmax temperature of the question-to-vision similarities; lower = each "
                 "question token favours fewer vision tokens (default: the family's, see `mmtok models`).",
                 rich_help_panel=SELECTION_PANEL),
]
TauVOpt = Annotated[
    float | None,
    typer.Option("--tau-v", help="Softmax temperature of the vision-to-vision similarities (default 0.2).",
                 rich_help_panel=SELECTION_PANEL),
]
CONVENTIONS_PANEL = "Conventions (the papers' code)"
BudgetOpt = Annotated[
    str | None,
    typer.Option("--budget", metavar="total|per-view|global", help="What --tokens means for an image made of "
                 "several views (LLaVA-NeXT crops, tiles): total (default: split evenly over the views), per-view "
                 "(--tokens for every view, as the MMTok and DivPrune authors' LLaVA-NeXT code; the records say "
                 "how many tokens that made), global (one selection over all the views).",
                 rich_help_panel=CONVENTIONS_PANEL),
]
QuestionWordsOpt = Annotated[
    str | None,
    typer.Option("--question-words", metavar="content|all", help="The question's words the selection covers: "
                 "content (default: stop words and answer-format instructions dropped) or all (\"Question: \" + "
                 "the question, split on whitespace, no filter: the MMTok authors' Qwen code).",
                 rich_help_panel=CONVENTIONS_PANEL),
]


def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """`--config FILE.yaml`: option defaults from a YAML mapping; flags on the command line still win.

    Keys are option names (`batch_size` or `batch-size`). A key another command uses is fine here
    (one file can serve ask and batch); a key no command knows is an error, so typos do not pass.
    """
    if value is None or ctx.resilient_parsing:
        return value
    import yaml

    try:
        if value.stat().st_size > CONFIG_MAX_BYTES:
            raise typer.BadParameter(f"{value} is over {CONFIG_MAX_BYTES // 1024} KB; a config file holds a few options")
        text = value.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {value}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise typer.BadParameter(f"{value} is not UTF-8 text (byte {exc.start})") from None
    try:
        # Aliases are refused before anything is built: a few hundred bytes of nested ones expand to gigabytes.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise typer.BadParameter(f"{value} uses a YAML alias (line {mark.line + 1}); write the values out")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise typer.BadParameter(f"{value} is not valid YAML{line}") from None
    if data is None:
        return value
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value} must hold a mapping of option names to values")
    options = {str(k).replace("-", "_"): v for k, v in data.items()}
    mine = _option_names(ctx.command)
    group = ctx.parent.command if ctx.parent else None
    known = {k for c in getattr(group, "commands", {}).values() for k in _option_names(c)} | set(mine)
    unknown = sorted(set(options) - known)
    if unknown:
        raise typer.BadParameter(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {value}; "
            f"known: {', '.join(sorted(known))}"
        )
    params = {p.name: p for p in ctx.command.params}
    for key, given in options.items():
        if key in mine:
            _check_config_type(value, key, given, params[mine[key]])
    ctx.default_map = {**(ctx.default_map or {}), **{mine[k]: v for k, v in options.items() if k in mine}}
    return value


CONFIG_MAX_BYTES = 64 * 1024


def _check_config_type(path: Path, key: str, given: Any, param: Any) -> None:
    """Strict types for config values: YAML's `true` is not the integer 1, nor is `[1]` a string."""
    import typing

    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    kinds = [a for a in typing.get_args(annotation) or (annotation,) if a is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else None
    if kind is Path:
        kind = str
    allowed = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(kind)
    if given is None or allowed is None:
        return
    if isinstance(given, bool) and bool not in allowed or not isinstance(given, allowed):
        shown = json.dumps(given) if isinstance(given, (bool, int, float, str)) else f"a {type(given).__name__}"
        want = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
        raise typer.BadParameter(f"'{key}' in {path} must be {want}, not {shown}")


def _option_names(command: Any) -> dict[str, str]:
    """Config keys a command accepts (its long flags, `json` for --json, and parameter names) -> parameter."""
    names = {}
    # Typer ships its own copy of click, so ask the parameter what it is rather than isinstance.
    for p in command.params:
        if p.param_type_name == "option" and p.name not in ("config", "help"):
            names[p.name] = p.name
            names.update({o.lstrip("-").replace("-", "_"): p.name for o in p.opts if o.startswith("--")})
    return names


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of option defaults, e.g. 'model: /models/llava' and 'tokens: 32' on separate lines; "
        "options given on the command line win.",
        callback=_load_config,
        is_eager=True,
        exists=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        print(f"mmtok {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Ask vision-language models about images with MMTok vision-token pruning."""


def _guarded(debug: bool, work: Callable[[], Any]) -> Any:
    """Run `work`; turn failures into one 'error:' line and an exit status (2 usage, 1 otherwise)."""
    if not debug:
        quiet_libraries()
    try:
        return work()
    except typer.Exit:
        raise
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly, as `yes | head` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit flush
        raise typer.Exit(141) from None
    except MmtokError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or an environment problem we did not foresee: still one line
        if debug:
            raise
        err.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(first_line(exc))} "
            "(rerun with --debug for details)",
            highlight=False,
        )
        raise typer.Exit(1) from None


def _engine_fields(engine: Engine, method: str, load_ms: float) -> dict[str, Any]:
    return {
        "model": engine.model_name,
        "family": engine.adapter.family,
        "method": method,
        "model_load_ms": round(load_ms, 3),
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
    }


def _load_engine(
    model: str, device: str, dtype: str, agent_model: str | None = None, cache_mb: int | None = None
) -> tuple[Engine, float]:
    from .engine import Engine

    start = time.perf_counter()
    also = f" and the agent's {escape(agent_model)}" if agent_model else ""
    with err.status(f"loading {escape(model)}{also} …"):
        engine = Engine(model, device=device, dtype=dtype, agent_model=agent_model, cache_mb=cache_mb)
    return engine, (time.perf_counter() - start) * 1e3


CompareOpt = Annotated[
    bool,
    typer.Option(
        "--compare",
        help="Also run unpruned (method full) and report the measured speedup and whether the answers agree.",
    ),
]


ShowOpt = Annotated[
    str | None,
    typer.Option("--show", metavar="PATH", help="Also save a picture of which image regions the model was given "
                 "(as `mmtok show` draws it; with --compare, next to the unpruned run)."),
]


def _show_target(path: str | None, image: str) -> Path | None:
    if path is None:
        return None
    from .show import check_picture_path

    return check_picture_path(path, "--show", inputs=[] if image == "-" else [image])


def _save_show(engine: Engine, image: Any, question: str, results: list[tuple[str, Any]], target: Path) -> None:
    from .show import picture_for, save_picture

    save_picture(picture_for(engine, image, question, results), target)
    err.print(f"picture of the kept regions written to {target}", style="dim", highlight=False, markup=False)


@app.command()
def ask(
    image: Annotated[str, typer.Argument(help="Image file to ask about ('-' reads it from stdin).")],
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    model: ModelOpt = DEFAULT_MODEL,
    tokens: TokensOpt = 64,
    method: MethodOpt = "mmtok",
    max_new_tokens: MaxNewOpt = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    compare: CompareOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")] = False,
    show_path: ShowOpt = None,
    alpha: AlphaOpt = None,
    tau_t: TauTOpt = None,
    tau_v: TauVOpt = None,
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
    agent: AgentOpt = False,
    agent_model: AgentModelOpt = None,
    agent_tokens: AgentTokensOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Answer one QUESTION about one IMAGE, showing the language model only --tokens vision tokens.

    Prints the answer on stdout, and on stderr how many vision tokens the model saw, how long the
    prompt was with and without pruning, and the estimated speedup.

    With --json, stdout gets one JSON object with: answer, vision_tokens {total, kept},
    prompt_tokens {unpruned, pruned}, timings_ms {preprocess, vision, select, prefill, decode,
    total}, speedup {estimated, measured}, kept_indices (one ascending list per image), model,
    family, method, model_load_ms, device, dtype. speedup.estimated is an ESTIMATE: the language
    model's prefill FLOPs unpruned / pruned, from the model config; speedup.measured is filled
    only with --compare. With --agent: agent_answer, and timings_ms.agent (in total too).

    Examples:

      mmtok ask photo.jpg "What is on the table?" --tokens 32

      mmtok ask photo.jpg "Describe the scene." --method full --json | jq .answer

      mmtok ask photo.jpg "How many people?" --compare --json | jq .speedup

      mmtok ask photo.jpg "Where is the dog?" --tokens 32 --show kept.png

      mmtok ask photo.jpg "What is the man holding?" --tokens 16 --agent --json | jq .agent_answer
    """
    from .io import answer_fields, load_image

    def work() -> None:
        check_options(tokens=tokens, method=method, max_new_tokens=max_new_tokens, dtype=dtype, device=device)
        check_agent(agent=agent, method=method, agent_model=agent_model, agent_tokens=agent_tokens)
        selection = selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                     question_words=question_words)
        if not question.strip():
            raise UsageError("the question is empty; pass the question as the second argument, in quotes")
        target = _show_target(show_path, image)
        picture = load_image(image)
        engine, load_ms = _load_engine(model, device, dtype, agent_model)
        options = {"tokens": tokens, "max_new_tokens": max_new_tokens}
        answer = engine.ask(picture, question, method=method, **options, agent=agent, agent_tokens=agent_tokens,
                            **selection)
        full = engine.ask(picture, question, method="full", **options) if compare else None
        if target is not None:
            _save_show(engine, picture, question, [(method, answer)] + ([("full", full)] if full else []), target)
        fields = answer_fields(answer, full=full)
        if as_json:
            record = {"image": image, "question": question, **fields, "kept_indices": answer.kept_indices,
                      **_engine_fields(engine, method, load_ms)}
            sys.stdout.write(json.dumps(record) + "\n")
            return
        sys.stdout.write(answer.answer + "\n")
        speedup = fields["speedup"]
        measured = f", measured {speedup['measured']:.2f}x" if speedup["measured"] else ""
        agree = "" if full is None else (" · same answer unpruned" if fields["compare"]["agree"] else
                                        f" · unpruned answer differs: {full.answer!r}")
        first = "" if answer.agent_answer is None else (
            f" · agent answered {answer.agent_answer!r} first ({answer.timings_ms['agent'] / 1e3:.2f} s of it)")
        err.print(
            f"vision tokens {answer.vision_kept}/{answer.vision_total} · "
            f"prompt {answer.prompt_pruned} tokens (was {answer.prompt_unpruned}) · "
            f"{answer.timings_ms['total'] / 1e3:.2f} s{first} · "
            f"speedup estimated {speedup['estimated']:.2f}x{measured}{agree}",
            style="dim",
            highlight=False,
            markup=False,
        )

    _guarded(debug, work)


@app.command()
def batch(
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="A JSONL file (one {\"image\", \"question\"} object per line), a folder of images "
            "(with --question), or '-' for JSONL on stdin.",
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Where records go: a JSONL file, or '-' for stdout.")
    ] = "-",
    question: Annotated[
        str | None,
        typer.Option("--question", "-q", help="The question for every image of a folder (for JSONL: the default "
                     "for lines without one)."),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    tokens: TokensOpt = 64,
    method: MethodOpt = "mmtok",
    max_new_tokens: MaxNewOpt = 64,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Items per forward pass (halved automatically on CUDA "
                          "out-of-memory).")
    ] = 8,
    compare: CompareOpt = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip ids already in the --out file and append the rest.")
    ] = False,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="With --resume: drop the records that have an error from the "
                           "--out file and run those items again.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    show_dir: Annotated[
        str | None,
        typer.Option("--show-dir", help="Also write one picture per answered item into this folder (ID.png): "
                     "which image regions the model was given, as `mmtok show` draws them."),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run on Ray: a pool of actors, each loading the model once "
                           "(needs pip install 'mmtok-cli[ray]').", rich_help_panel="Ray")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="A running Ray cluster (e.g. auto, or "
                                 "ray://head:10001); default: start a local Ray instance.", rich_help_panel="Ray")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Ray actors (model copies).", rich_help_panel="Ray")] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option("--gpus-per-worker", help="GPUs each Ray actor reserves (0: CPU only).",
                            rich_help_panel="Ray")
    ] = 0.0,
    download_timeout: Annotated[
        float, typer.Option("--download-timeout", help="Seconds one image URL may take in all (connect, redirects, "
                            "body; at most 50 MB): a slower one fails its item alone.")
    ] = 30.0,
    cache_mb: CacheOpt = None,
    alpha: AlphaOpt = None,
    tau_t: TauTOpt = None,
    tau_v: TauVOpt = None,
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
    agent: AgentOpt = False,
    agent_model: AgentModelOpt = None,
    agent_tokens: AgentTokensOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Answer many questions about many images, batched, writing one JSON record per input line.

    INPUT lines look like {"image": "cat.jpg", "question": "What is here?"}; image paths are
    relative to the JSONL file's folder (or absolute, or http(s) URLs). Optional keys: id (default:
    the line number), tokens, max_new_tokens; any other key is copied to the record (a key that
    clashes with a record field goes under "input").

    Every input line gets exactly one record, in input order: id, image, question, answer,
    vision_tokens {total, kept}, prompt_tokens {unpruned, pruned}, timings_ms (this item's share of
    its batch, plus 'load': its own image loading, done in the background), speedup {estimated,
    measured}, error. A line that cannot be answered (bad JSON, missing field, missing or corrupt
    image, unreachable URL, empty question) gets error set, and the run goes on. speedup.estimated
    is an ESTIMATE (language-model prefill FLOPs unpruned / pruned, from the config); measured and
    a 'compare' object {answer, agree, timings_ms} come with --compare. With --agent, records also have
    agent_answer and timings_ms.agent (the first pass runs once per batch), and the summary its share.

    Records are flushed after every batch: an interrupted run loses at most the batch in flight, and
    --resume continues it. stdout carries only records; progress and the summary go to stderr.

    Exit status: 0 every item answered, 1 some items have errors (or the run failed), 2 bad options.

    Examples:

      mmtok batch questions.jsonl --out answers.jsonl --batch-size 16

      mmtok batch photos/ --question "What is in this picture?" --out captions.jsonl

      cat questions.jsonl | mmtok batch - --tokens 32 | jq -r .answer

      mmtok batch questions.jsonl --out answers.jsonl --resume

      mmtok batch questions.jsonl --out answers.jsonl --resume --retry-errors

      mmtok batch questions.jsonl --out answers.jsonl --ray --ray-address auto --workers 8 --gpus-per-worker 1

      mmtok batch questions.jsonl --out answers.jsonl --tokens 16 --agent --agent-model Qwen/Qwen2.5-VL-3B-Instruct
    """

    def work() -> int:
        check_options(tokens=tokens, method=method, max_new_tokens=max_new_tokens, dtype=dtype, device=device)
        check_agent(agent=agent, method=method, agent_model=agent_model, agent_tokens=agent_tokens)
        selection = selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                     question_words=question_words)
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
        if workers < 1 or gpus_per_worker < 0:
            raise UsageError("--workers must be at least 1 and --gpus-per-worker at least 0")
        if not ray and (ray_address or workers != 1 or gpus_per_worker):
            raise UsageError("--ray-address, --workers and --gpus-per-worker need --ray")
        if retry_errors and not resume:
            raise UsageError("--retry-errors goes with --resume (it re-runs the failed items of an earlier run)")
        if not (math.isfinite(download_timeout) and download_timeout > 0):
            raise UsageError(f"--download-timeout must be a number of seconds above 0 (got {download_timeout})")
        check_cache(cache_mb)
        from .io import plan_inputs

        plan = plan_inputs(source, out, question, resume=resume, overwrite=overwrite, retry_errors=retry_errors)
        pictures = None
        if show_dir is not None:
            from .show import prepare_picture_dir

            pictures = prepare_picture_dir(show_dir)
        from .batch import BatchOptions, BatchProgress, BatchRunner, print_summary
        from .io import RecordWriter, WriteError

        options = BatchOptions(tokens=tokens, method=method, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, compare=compare, debug=debug, show_dir=pictures,
                               agent=agent, agent_tokens=agent_tokens,
                               selection=selection, download_timeout=download_timeout)
        if ray:
            from .models.registry import check_model
            from .ray_batch import RayOptions, import_ray, run_on_ray

            import_ray()  # fail before touching --out when Ray is missing
            check_model(model)  # and before starting Ray when the model cannot be found
            if agent_model is not None:
                from .engine import check_agent_model

                check_agent_model(agent_model)
            ray_options = RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)

            def execute(emit: Callable, update: Callable) -> Summary:
                return run_on_ray(plan.items(warn), emit, update, model=model, device=device, dtype=dtype,
                                  options=options, base=plan.base, ray_options=ray_options, agent_model=agent_model,
                                  cache_mb=cache_mb)
        else:
            runner = BatchRunner(_load_engine(model, device, dtype, agent_model, cache_mb)[0], options, base=plan.base)

            def execute(emit: Callable, update: Callable) -> Summary:
                return runner.run(plan.items(warn), emit, update)

        writer = RecordWriter(out, append=resume)
        def warn(message: str) -> None:
            err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

        with BatchProgress(err, plan.total, plan.skipped) as progress:
            try:
                summary = execute(writer.write, progress.update)
            except KeyboardInterrupt:
                progress.stop()
                err.print(f"[red]interrupted[/]; records written so far are complete: rerun with --resume "
                          f"to continue{'' if out != '-' else ' (needs --out FILE)'}", highlight=False)
                raise typer.Exit(130) from None
            except WriteError as exc:  # a full disk: say what is safe and how to go on
                raise writer.stopped(exc) from None
            finally:
                writer.close()
        print_summary(err, summary, plan, out, batch_size)
        return 1 if summary.failed else 0

    code = _guarded(debug, work)
    raise typer.Exit(code)


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
) -> None:
    """List the supported model families, with their defaults and an example checkpoint each.

    The family is detected from the checkpoint's config.json (model_type), so any checkpoint of a
    listed family works, including local folders.
    """
    from .models import ADAPTERS
    from .selection import ALPHA, TAU_V

    rows = [
        {
            "family": a.family,
            "model_types": list(a.model_types),
            "tau_t": a.tau_t,
            "tau_v": TAU_V,
            "alpha": ALPHA,
            "tokens": a.budget,
            "example": a.example,
        }
        for a in ADAPTERS
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    for row in rows:
        sys.stdout.write(
            f"{row['family']:<12} e.g. {row['example']}\n"
            f"{'':<12} config model_type: {', '.join(row['model_types'])} · tau_t {row['tau_t']} · "
            f"tau_v {row['tau_v']} · alpha {row['alpha']}\n"
            f"{'':<12} --tokens: {row['tokens']}\n"
        )


@app.command("show")
def show_command(
    image: Annotated[str, typer.Argument(help="Image file to ask about ('-' reads it from stdin).")],
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Picture to write (.png, .jpg, ...).")],
    methods: Annotated[
        str,
        typer.Option("--methods", help=f"Comma-separated token selections drawn side by side.\n\n{METHODS_HELP}"),
    ] = "mmtok",
    model: ModelOpt = DEFAULT_MODEL,
    tokens: TokensOpt = 64,
    max_new_tokens: MaxNewOpt = 64,
    numbers: Annotated[
        bool,
        typer.Option("--numbers", help="Write each kept token's pick rank in its region (1 = picked first). "
                     "mmtok, vision, text, divprune and visionzip pick in order; random, uniform and full are numbered in "
                     "token order. A number larger than its region (small tokens, 3-digit ranks) is left out."),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    alpha: AlphaOpt = None,
    tau_t: TauTOpt = None,
    tau_v: TauVOpt = None,
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Draw which regions of IMAGE the model was given to answer QUESTION: kept tokens bright and outlined,
    dropped ones dimmed, with a caption (method, kept/total tokens, model, answer).

    Regions are exact for each family: LLaVA-1.5 through its resize and center crop or pad-to-square;
    LLaVA-NeXT as two panels, its coarse base view and its high-resolution crops; Qwen-VL's merged
    tokens over its dynamic-resolution grid. Prints one line per method on stdout: METHOD: ANSWER.

    Examples:

      mmtok show photo.jpg "Where is the dog?" --tokens 32 --out kept.png

      mmtok show photo.jpg "Where is the dog?" --tokens 32 --methods mmtok,full --out compare.png

      mmtok show photo.jpg "Where is the dog?" --tokens 16 --numbers --out order.png
    """
    from .io import load_image
    from .show import check_picture_path, parse_methods, save_picture, show

    def work() -> None:
        chosen = parse_methods(methods)
        for method in chosen:
            check_options(tokens=tokens, method=method, max_new_tokens=max_new_tokens, dtype=dtype, device=device)
        selection = selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                     question_words=question_words)
        if not question.strip():
            raise UsageError("the question is empty; pass the question as the second argument, in quotes")
        target = check_picture_path(out, "--out", inputs=[] if image == "-" else [image])
        picture = load_image(image)
        engine, _ = _load_engine(model, device, dtype)
        sheet, results = show(engine, picture, question, chosen, numbers=numbers, tokens=tokens,
                              max_new_tokens=max_new_tokens, **selection)
        save_picture(sheet, target)
        for method, answer in results:
            sys.stdout.write(f"{method}: {answer.answer}\n")
        kept = " · ".join(f"{m} {a.vision_kept}/{a.vision_total}" for m, a in results)
        err.print(f"vision tokens {kept} · picture written to {target}", style="dim", highlight=False, markup=False)

    _guarded(debug, work)


def _check_outputs(*outputs: tuple[str, Path | None], plot: Path | None, inputs: tuple[Path, ...] = ()) -> None:
    """Fail now, not after minutes of work: every (option, path) output can be written, none is an input, and
    --plot has matplotlib."""
    from .io import check_output

    for option, path in outputs:
        if path is not None:
            check_output(path, option, inputs=inputs)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'mmtok-cli[plot]'") from None


@app.command()
def profile(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help=f"Hub id or local checkpoint folder [default: {DEFAULT_MODEL}]."),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option("--arch", help="A real architecture with random weights, nothing downloaded: "
                     f"{', '.join(n for n in ARCHS if not n.startswith('cpu-small'))}; or cpu-small (LLaVA-1.5-7B "
                     "widths, 2 + 2 layers; about a minute on 2 CPU cores) and the other families' reduced-depth "
                     f"presets for CPU runs: {', '.join(n for n in ARCHS if n.startswith('cpu-small-'))}."),
    ] = None,
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
    method: MethodOpt = "mmtok",
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
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
    """
    from .profile import DEFAULT_QUESTION, parse_batch_sizes, parse_budgets

    def work() -> None:
        if model and arch:
            raise UsageError("give --model or --arch, not both")
        budgets, sizes = parse_budgets(tokens), parse_batch_sizes(batch_size)
        check_options(tokens=1, method=method, max_new_tokens=new_tokens, dtype=dtype, device=device)
        conventions = selection_params(alpha=None, tau_t=None, tau_v=None, budget=budget,
                                       question_words=question_words)
        if repeats < 1 or warmup < 0:
            raise UsageError("--repeats must be at least 1 and --warmup at least 0")
        _check_outputs(("--json", json_path), ("--plot", plot_path), plot=plot_path)
        picture = None
        if image is not None:
            from .io import load_image

            picture = load_image(image)
        from . import profile as prof

        start = time.perf_counter()
        with err.status(f"building {escape(arch)} with random weights …" if arch else
                        f"loading {escape(model or DEFAULT_MODEL)} …") as status:
            if arch:
                engine = prof.load_arch(arch, device=device, dtype=dtype)
            else:  # not _load_engine: its own status line cannot nest in this one
                from .engine import Engine

                engine = Engine(model or DEFAULT_MODEL, device=device, dtype=dtype)
            load_s = time.perf_counter() - start
            report = prof.profile(
                engine, budgets=budgets, batch_sizes=sizes, new_tokens=new_tokens, warmup=warmup,
                repeats=repeats, image=picture, question=question or DEFAULT_QUESTION,
                progress=lambda text: status.update(f"profiling: {escape(text)}"), method=method, **conventions,
            )
        report["load_s"] = round(load_s, 2)
        report["wall_s"] = round(time.perf_counter() - start, 2)
        _print_profile(report)  # first: an output that fails to write (a full disk) must not take the table along
        if json_path is not None:
            from .io import write_text

            write_text(json_path, json.dumps(report, indent=2) + "\n", "--json")
        if plot_path is not None:
            prof.plot(report, plot_path)

    _guarded(debug, work)


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


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write images/, questions.jsonl and scenes.json to.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed writes byte-identical files.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into an --out folder that is not empty.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Write a small labelled data set of coloured shapes: PNG scenes and OUT/questions.jsonl.

    Questions per image: POPE-style yes/no existence questions (random, popular and adversarial
    negatives), "What colour is the square?" / "What shape is the blue object?" (only when
    unambiguous; one-word answers) and "How many circles are there?" (answered as a digit). Each line
    has image (relative to OUT), question, answer, type and id: ready for `mmtok eval` or `mmtok batch`.
    The existence questions are also written in POPE's own format, one file per setting
    (OUT/pope_random.json, pope_popular.json, pope_adversarial.json; images named as in OUT/images).

    Example:

      mmtok synth --out synth --n 100 && mmtok eval synth/questions.jsonl --tokens 64,16,4

      mmtok eval synth/pope_random.json synth/pope_popular.json --images synth/images
    """
    from .synth import generate

    def work() -> None:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out '{out}' is a file; give a folder")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise UsageError(f"--out '{out}' is not empty; pass --overwrite to write into it anyway")
        generate(out, n, seed)
        lines = sum(1 for _ in (out / "questions.jsonl").open(encoding="utf-8"))
        err.print(f"{n} images and {lines} questions written to {out / 'questions.jsonl'}", highlight=False,
                  markup=False)

    _guarded(debug, work)


@app.command("eval")
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
    from .evaluate import load_labelled, parse_methods, parse_tokens
    from .io import RecordWriter

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
        _check_outputs(("--json", json_path), ("--plot", plot_path), ("--predictions", predictions_path),
                       plot=plot_path, inputs=tuple(data))
        sets = [(path, *load_labelled(path, images)) for path in data]  # every file checked before the model loads
        from . import evaluate as ev

        engine, _ = _load_engine(model, device, dtype, agent_model, cache_mb)
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
                        selection=selection,
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

    _guarded(debug, work)


def _print_eval(report: dict[str, Any]) -> None:
    from rich.table import Table

    def num(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    table = Table(title=f"{report['model']} · {report['data']} · {report['items']} items",
                  caption=f"retention = {report['metric']} / full's {report['metric']} · "
                  + " · ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in report["selection"].items())
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
