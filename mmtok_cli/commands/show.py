"""`mmtok show`: a picture of the image regions (and video frames) the model was given."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..options import DEFAULT_MODEL, check_options, selection_params
from ..video import MAX_FRAMES
from .common import (
    METHODS_HELP,
    AlphaOpt,
    BudgetOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    FpsOpt,
    FramesOpt,
    MaxFramesOpt,
    MaxNewOpt,
    ModelOpt,
    PanAndScanOpt,
    QuestionWordsOpt,
    TauTOpt,
    TauVOpt,
    TokensOpt,
    decode_videos,
    err,
    guarded,
    load_engine,
    open_inputs,
    sampling,
    split_arguments,
)
from .config import ConfigOpt


def show_command(
    arguments: Annotated[
        list[str],
        typer.Argument(metavar="IMAGE|VIDEO... QUESTION", help="One or more image or video files ('-' reads one "
                       "image from stdin), then the question, in quotes."),
    ],
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
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = MAX_FRAMES,
    pan_and_scan: PanAndScanOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Draw which regions of IMAGE the model was given to answer QUESTION: kept tokens bright and outlined,
    dropped ones dimmed, with a caption (method, kept/total tokens, model, answer).

    Regions are exact for each family: LLaVA-1.5 through its resize and center crop or pad-to-square;
    LLaVA-NeXT as two panels, its coarse base view and its high-resolution crops; Qwen-VL's merged
    tokens over its dynamic-resolution grid. Several images are drawn side by side; a video as a contact
    sheet of its sampled frames, a tile per temporal grid with that grid's kept tokens bright. Prints one
    line per method on stdout: METHOD: ANSWER.

    Examples:

      mmtok show photo.jpg "Where is the dog?" --tokens 32 --out kept.png

      mmtok show photo.jpg "Where is the dog?" --tokens 32 --methods mmtok,full --out compare.png

      mmtok show photo.jpg "Where is the dog?" --tokens 16 --numbers --out order.png

      mmtok show clip.mp4 "What happens?" --tokens 128 --frames 16 --out clip.png
    """
    from ..show import check_picture_path, parse_methods, save_picture, show

    def work() -> None:
        chosen = parse_methods(methods)
        for method in chosen:
            check_options(tokens=tokens, method=method, max_new_tokens=max_new_tokens, dtype=dtype, device=device)
        selection = selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                     question_words=question_words)
        frame_choice = sampling(frames, fps, max_frames)
        sources, question = split_arguments(arguments)
        target = check_picture_path(out, "--out", inputs=[path for _, path in sources if path != "-"])
        opened = open_inputs(sources)
        engine, _ = load_engine(model, device, dtype, pan_and_scan=pan_and_scan)
        picture = decode_videos(engine, sources, opened, frame_choice)
        sheet, results = show(engine, picture, question, chosen, numbers=numbers, tokens=tokens,
                              max_new_tokens=max_new_tokens, **selection)
        save_picture(sheet, target)
        for method, answer in results:
            sys.stdout.write(f"{method}: {answer.answer}\n")
        kept = " · ".join(f"{m} {a.vision_kept}/{a.vision_total}" for m, a in results)
        err.print(f"vision tokens {kept} · picture written to {target}", style="dim", highlight=False, markup=False)

    guarded(debug, work)
