"""`mmtok show`: a picture of the image regions the model was given."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import UsageError
from ..options import DEFAULT_MODEL, check_options, selection_params
from .common import (
    METHODS_HELP,
    AlphaOpt,
    BudgetOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    MaxNewOpt,
    ModelOpt,
    PanAndScanOpt,
    QuestionWordsOpt,
    TauTOpt,
    TauVOpt,
    TokensOpt,
    err,
    guarded,
    load_engine,
)
from .config import ConfigOpt


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
    pan_and_scan: PanAndScanOpt = None,
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
    from ..io import load_image
    from ..show import check_picture_path, parse_methods, save_picture, show

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
        engine, _ = load_engine(model, device, dtype, pan_and_scan=pan_and_scan)
        sheet, results = show(engine, picture, question, chosen, numbers=numbers, tokens=tokens,
                              max_new_tokens=max_new_tokens, **selection)
        save_picture(sheet, target)
        for method, answer in results:
            sys.stdout.write(f"{method}: {answer.answer}\n")
        kept = " · ".join(f"{m} {a.vision_kept}/{a.vision_total}" for m, a in results)
        err.print(f"vision tokens {kept} · picture written to {target}", style="dim", highlight=False, markup=False)

    guarded(debug, work)
