"""`mmtok ask`: one question about one image."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError
from ..options import DEFAULT_MODEL, check_agent, check_options, selection_params
from .common import (
    AgentModelOpt,
    AgentOpt,
    AgentTokensOpt,
    AlphaOpt,
    BudgetOpt,
    CompareOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    MaxNewOpt,
    MethodOpt,
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

if TYPE_CHECKING:
    from ..engine import Engine


def _engine_fields(engine: Engine, method: str, load_ms: float) -> dict[str, Any]:
    return {
        "model": engine.model_name,
        "family": engine.adapter.family,
        "method": method,
        "model_load_ms": round(load_ms, 3),
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        **({} if engine.pan_and_scan is None else {"pan_and_scan": engine.pan_and_scan}),
    }



ShowOpt = Annotated[
    str | None,
    typer.Option("--show", metavar="PATH", help="Also save a picture of which image regions the model was given "
                 "(as `mmtok show` draws it; with --compare, next to the unpruned run)."),
]


def _show_target(path: str | None, image: str) -> Path | None:
    if path is None:
        return None
    from ..show import check_picture_path

    return check_picture_path(path, "--show", inputs=[] if image == "-" else [image])


def _save_show(engine: Engine, image: Any, question: str, results: list[tuple[str, Any]], target: Path) -> None:
    from ..show import picture_for, save_picture

    save_picture(picture_for(engine, image, question, results), target)
    err.print(f"picture of the kept regions written to {target}", style="dim", highlight=False, markup=False)


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
    pan_and_scan: PanAndScanOpt = None,
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
    from ..io import answer_fields, load_image

    def work() -> None:
        check_options(tokens=tokens, method=method, max_new_tokens=max_new_tokens, dtype=dtype, device=device)
        check_agent(agent=agent, method=method, agent_model=agent_model, agent_tokens=agent_tokens)
        selection = selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                     question_words=question_words)
        if not question.strip():
            raise UsageError("the question is empty; pass the question as the second argument, in quotes")
        target = _show_target(show_path, image)
        picture = load_image(image)
        engine, load_ms = load_engine(model, device, dtype, agent_model, pan_and_scan=pan_and_scan)
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

    guarded(debug, work)

