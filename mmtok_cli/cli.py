"""The `mmtok` command: parses options, calls the engine, prints. Nothing else lives here.

Exit status: 0 success, 1 the work failed (unreadable image, model that cannot be loaded, ...),
2 the command line asked for something impossible.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from . import __version__
from .errors import MmtokError, UsageError
from .options import DEFAULT_MODEL, METHODS, check_options

if TYPE_CHECKING:  # the ML stack loads lazily so bad input is rejected fast
    from .engine import Answer, Engine

app = typer.Typer(
    name="mmtok",
    help=(
        "Ask vision-language models about images while the language model reads only a few, "
        "well-chosen vision tokens (MMTok coverage pruning, arXiv 2508.18264)."
    ),
    epilog=(
        "Examples:  mmtok ask photo.jpg \"What is here?\" --tokens 32   ·   "
        "mmtok ask photo.jpg \"Describe it.\" --json | jq .answer   ·   "
        "exit status 0 ok, 1 failed, 2 bad options"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, soft_wrap=True)  # soft wrap: an error stays one line in logs

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m",
        help="Hugging Face hub id or local checkpoint folder (see `mmtok models` for the families).",
        show_default=True,
    ),
]
TokensOpt = Annotated[
    int,
    typer.Option(
        "--tokens", "-k",
        help="Vision tokens the language model sees per image (LLaVA-1.5 has 576). "
        "A budget >= the image's tokens keeps them all.",
    ),
]
MethodOpt = Annotated[
    str, typer.Option("--method", help=f"Token selection: {' | '.join(METHODS)} (full = no pruning).")
]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate (greedy decoding).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto picks cuda when available).")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16 (auto: bfloat16 on GPU, float32 on CPU).")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks and library warnings.")]


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


def _quiet_libraries() -> None:
    """Keep stderr for our own messages: no transformers warnings or weight-loading bars."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")


def _guarded(debug: bool, work: Callable[[], Any]) -> Any:
    """Run `work`; turn failures into one 'error:' line and an exit status (2 usage, 1 otherwise)."""
    if not debug:
        _quiet_libraries()
    try:
        return work()
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
        first = (str(exc).strip().splitlines() or [""])[0]
        err.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(first)} (rerun with --debug for details)",
            highlight=False,
        )
        raise typer.Exit(1) from None


def _record(answer: Answer, *, engine: Engine, method: str, load_ms: float, **extra: Any) -> dict:
    return {
        **extra,
        "answer": answer.answer,
        "model": engine.model_name,
        "family": engine.adapter.family,
        "method": method,
        "vision_tokens": {"total": answer.vision_total, "kept": answer.vision_kept},
        "kept_indices": answer.kept_indices,
        "prompt_tokens": {"unpruned": answer.prompt_unpruned, "pruned": answer.prompt_pruned},
        "timings_ms": answer.timings_ms,
        "model_load_ms": round(load_ms, 3),
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
    }


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
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of text.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Answer one QUESTION about one IMAGE, showing the language model only --tokens vision tokens.

    Prints the answer on stdout, and on stderr how many vision tokens the model saw, how long the
    prompt was with and without pruning, and the time taken.

    With --json, stdout gets one JSON object with: answer, model, method, vision_tokens {total,
    kept}, kept_indices (one ascending list per image), prompt_tokens {unpruned, pruned},
    timings_ms {preprocess, vision, select, prefill, decode, total}, device, dtype.

    Examples:

      mmtok ask photo.jpg "What is on the table?" --tokens 32

      mmtok ask photo.jpg "Describe the scene." --method full --json | jq .answer
    """
    from .io import load_image

    def work() -> None:
        check_options(tokens=tokens, method=method, max_new_tokens=max_new_tokens, dtype=dtype, device=device)
        if not question.strip():
            raise UsageError("the question is empty; pass the question as the second argument, in quotes")
        picture = load_image(image)
        from .engine import Engine

        start = time.perf_counter()
        with err.status(f"loading {model} …"):
            engine = Engine(model, device=device, dtype=dtype)
        load_ms = (time.perf_counter() - start) * 1e3
        answer = engine.ask(picture, question, tokens=tokens, method=method, max_new_tokens=max_new_tokens)
        if as_json:
            record = _record(answer, engine=engine, method=method, load_ms=load_ms, image=image, question=question)
            sys.stdout.write(json.dumps(record) + "\n")
        else:
            sys.stdout.write(answer.answer + "\n")
            err.print(
                f"vision tokens {answer.vision_kept}/{answer.vision_total} · "
                f"prompt {answer.prompt_pruned} tokens (was {answer.prompt_unpruned}) · "
                f"{answer.timings_ms['total'] / 1e3:.2f} s",
                style="dim",
                highlight=False,
            )

    _guarded(debug, work)


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
