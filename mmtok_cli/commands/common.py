"""What the commands share: option types with their help and panels, the stderr console, running a command's
work with one-line errors, loading the engine and checking outputs before it loads."""

from __future__ import annotations

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

from ..archs import ARCHS
from ..errors import MmtokError, UsageError, first_line
from ..options import AGENT_MAX_NEW_TOKENS, AGENT_METHODS, METHOD_HELP, METHODS
from ..quiet import quiet_libraries

if TYPE_CHECKING:  # the ML stack loads lazily so bad input is rejected fast
    from ..engine import Engine

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

PostPromptOpt = Annotated[
    str | None,
    typer.Option("--post-prompt", metavar="TEXT", help="An instruction appended to every question on a line of its "
                 "own, as lmms-eval's tasks do: e.g. \"Answer the question using a single word or phrase.\" (its "
                 "pope task's). The selection does not cover its words (with --question-words all it does: all is "
                 "every word the model reads). Default: none."),
]
PanAndScanOpt = Annotated[
    bool | None,
    typer.Option("--pan-and-scan/--no-pan-and-scan", help="Gemma 3: crop long images into extra views (its "
                 "pan-and-scan), each a view --tokens is split over; records say pan_and_scan (default: the "
                 "checkpoint's setting, off on Google's). An error on families without it."),
]
ArchOpt = Annotated[
    str | None,
    typer.Option("--arch", help="A real architecture with random weights, nothing downloaded: "
                 f"{', '.join(n for n in ARCHS if not n.startswith('cpu-small'))}; or cpu-small (LLaVA-1.5-7B "
                 "widths, 2 + 2 layers; about a minute on 2 CPU cores) and the other families' reduced-depth "
                 f"presets for CPU runs: {', '.join(n for n in ARCHS if n.startswith('cpu-small-'))}."),
]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="A running Ray cluster (e.g. auto, or ray://head:10001); "
                             "default: start a local Ray instance.", rich_help_panel="Ray")
]
DownloadTimeoutOpt = Annotated[
    float, typer.Option("--download-timeout", help="Seconds one image URL may take in all (connect, redirects, "
                        "body; at most 50 MB): a slower one fails its item alone.")
]


def check_download_timeout(seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"--download-timeout must be a number of seconds above 0 (got {seconds})")


def guarded(debug: bool, work: Callable[[], Any]) -> Any:
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



def load_engine(
    model: str, device: str, dtype: str, agent_model: str | None = None, cache_mb: int | None = None,
    pan_and_scan: bool | None = None,
) -> tuple[Engine, float]:
    from ..engine import Engine

    start = time.perf_counter()
    also = f" and the agent's {escape(agent_model)}" if agent_model else ""
    with err.status(f"loading {escape(model)}{also} …"):
        engine = Engine(model, device=device, dtype=dtype, agent_model=agent_model, cache_mb=cache_mb,
                        pan_and_scan=pan_and_scan)
    return engine, (time.perf_counter() - start) * 1e3


CompareOpt = Annotated[
    bool,
    typer.Option(
        "--compare",
        help="Also run unpruned (method full) and report the measured speedup and whether the answers agree.",
    ),
]


def check_outputs(*outputs: tuple[str, Path | None], plot: Path | None, inputs: tuple[Path, ...] = ()) -> None:
    """Fail now, not after minutes of work: every (option, path) output can be written, none is an input, and
    --plot has matplotlib."""
    from ..io import check_output

    for option, path in outputs:
        if path is not None:
            check_output(path, option, inputs=inputs)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'mmtok-cli[plot]'") from None

