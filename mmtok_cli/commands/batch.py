"""`mmtok batch`: many questions about many images, one JSON record per input line (locally or on Ray)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ..errors import UsageError
from ..options import DEFAULT_MODEL, check_agent, check_cache, check_options, check_post_prompt, selection_params
from ..video import MAX_FRAMES
from .common import (
    AgentModelOpt,
    AgentOpt,
    AgentTokensOpt,
    AlphaOpt,
    BudgetOpt,
    CacheOpt,
    CompareOpt,
    DebugOpt,
    DeviceOpt,
    DownloadTimeoutOpt,
    DtypeOpt,
    FpsOpt,
    FramesOpt,
    MaxFramesOpt,
    MaxNewOpt,
    MethodOpt,
    ModelOpt,
    PanAndScanOpt,
    PostPromptOpt,
    QuestionWordsOpt,
    RayAddressOpt,
    TauTOpt,
    TauVOpt,
    TokensOpt,
    check_download_timeout,
    err,
    guarded,
    load_engine,
    sampling,
)
from .config import ConfigOpt

if TYPE_CHECKING:
    from ..batch import Summary


def batch(
    source: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="A JSONL file (one {\"image\", \"question\"} object per line), a folder of images "
            "and videos (with --question), or '-' for JSONL on stdin.",
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
    ray_address: RayAddressOpt = None,
    workers: Annotated[int, typer.Option("--workers", help="Ray actors (model copies).", rich_help_panel="Ray")] = 1,
    gpus_per_worker: Annotated[
        float, typer.Option("--gpus-per-worker", help="GPUs each Ray actor reserves (0: CPU only).",
                            rich_help_panel="Ray")
    ] = 0.0,
    download_timeout: DownloadTimeoutOpt = 30.0,
    cache_mb: CacheOpt = None,
    alpha: AlphaOpt = None,
    tau_t: TauTOpt = None,
    tau_v: TauVOpt = None,
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
    post_prompt: PostPromptOpt = None,
    pan_and_scan: PanAndScanOpt = None,
    agent: AgentOpt = False,
    agent_model: AgentModelOpt = None,
    agent_tokens: AgentTokensOpt = None,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    max_frames: MaxFramesOpt = MAX_FRAMES,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Answer many questions about many images (or videos), batched, writing one JSON record per input line.

    INPUT lines look like {"image": "cat.jpg", "question": "What is here?"}; image paths are
    relative to the JSONL file's folder (or absolute, or http(s) URLs). Optional keys: id (default:
    the line number), tokens, max_new_tokens; any other key is copied to the record (a key that
    clashes with a record field goes under "input").

    Several images or videos per question: "images": [...], "video": "clip.mp4" or "videos": [...]
    (with or without "image"), in the order of the line's keys; --tokens is the total for all of
    them. A folder's video files are items too. Videos need the `video` extra; their frames:
    --frames / --fps / --max-frames. Records of such items add vision_tokens.inputs (each input's
    kind, total and kept; a video's frames); a corrupt, empty, audio-only or oversized video fails
    its item alone.

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
        check_download_timeout(download_timeout)
        check_cache(cache_mb)
        frame_choice = sampling(frames, fps, max_frames)
        check_post_prompt(post_prompt)
        from ..io import plan_inputs

        plan = plan_inputs(source, out, question, resume=resume, overwrite=overwrite, retry_errors=retry_errors)
        pictures = None
        if show_dir is not None:
            from ..show import prepare_picture_dir

            pictures = prepare_picture_dir(show_dir)
        from ..batch import BatchOptions, BatchProgress, BatchRunner, print_summary
        from ..io import RecordWriter, WriteError

        options = BatchOptions(tokens=tokens, method=method, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, compare=compare, debug=debug, show_dir=pictures,
                               agent=agent, agent_tokens=agent_tokens,
                               selection=selection, download_timeout=download_timeout, frame_sampling=frame_choice,
                               post_prompt=post_prompt)
        if ray:
            from ..models.registry import check_model, check_pan_and_scan
            from ..ray_batch import RayOptions, import_ray, run_on_ray

            import_ray()  # fail before touching --out when Ray is missing
            check_model(model)  # and before starting Ray when the model cannot be found
            check_pan_and_scan(model, pan_and_scan)
            if agent_model is not None:
                from ..engine import check_agent_model

                check_agent_model(agent_model)
            ray_options = RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)

            def execute(emit: Callable, update: Callable) -> Summary:
                return run_on_ray(plan.items(warn), emit, update, model=model, device=device, dtype=dtype,
                                  options=options, base=plan.base, ray_options=ray_options, agent_model=agent_model,
                                  cache_mb=cache_mb, pan_and_scan=pan_and_scan)
        else:
            engine = load_engine(model, device, dtype, agent_model, cache_mb, pan_and_scan)[0]
            runner = BatchRunner(engine, options, base=plan.base)

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

    code = guarded(debug, work)
    raise typer.Exit(code)
