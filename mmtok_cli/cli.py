"""The `mmtok` command: the Typer app, assembled from one module per command (mmtok_cli/commands/).

Exit status: 0 success, 1 the work failed (unreadable image, model that cannot be loaded, ...),
2 the command line asked for something impossible.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # current Typer ships its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # older Typer uses click itself
    from click import ClickException

from . import __version__
from .commands.ask import ask
from .commands.batch import batch
from .commands.common import err
from .commands.eval import eval_command
from .commands.models import models
from .commands.profile import profile
from .commands.serve import serve
from .commands.show import show_command
from .commands.synth import synth


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


# In this order in `mmtok --help`.
app.command()(ask)
app.command()(batch)
app.command()(serve)
app.command()(models)
app.command("show")(show_command)
app.command()(profile)
app.command()(synth)
app.command("eval")(eval_command)
