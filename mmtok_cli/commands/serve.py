"""`mmtok serve`: an OpenAI-compatible HTTP server where every request sets its own vision-token budget."""

from __future__ import annotations

from typing import Annotated

import typer

from ..options import DEFAULT_MODEL, selection_params
from .common import (
    AgentModelOpt,
    AgentOpt,
    AgentTokensOpt,
    AlphaOpt,
    ArchOpt,
    BudgetOpt,
    CacheOpt,
    DebugOpt,
    DeviceOpt,
    DownloadTimeoutOpt,
    DtypeOpt,
    MethodOpt,
    PanAndScanOpt,
    QuestionWordsOpt,
    RayAddressOpt,
    TauTOpt,
    TauVOpt,
    TokensOpt,
    err,
    guarded,
)
from .config import ConfigOpt

SERVER = "Server"
BATCHING = "Batching"
LIMITS = "Limits and safety"


def serve(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Hugging Face hub id, local checkpoint folder, or `demo` [default: "
                     f"{DEFAULT_MODEL}]; clients send it as `model`."),
    ] = None,
    arch: ArchOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 for every interface (the "
                                      "default answers this machine only).", rich_help_panel=SERVER)] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on; 0 picks a free one (printed).",
                                      rich_help_panel=SERVER)] = 8000,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="MMTOK_API_KEY", help="Every route but /health then demands "
                                 "'Authorization: Bearer KEY' (401 otherwise).", rich_help_panel=SERVER)
    ] = None,
    tokens: TokensOpt = 64,
    method: MethodOpt = "mmtok",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="A request's max_tokens when it sends none.")
    ] = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    cache_mb: CacheOpt = None,
    pan_and_scan: PanAndScanOpt = None,
    alpha: AlphaOpt = None,
    tau_t: TauTOpt = None,
    tau_v: TauVOpt = None,
    budget: BudgetOpt = None,
    question_words: QuestionWordsOpt = None,
    agent: AgentOpt = False,
    agent_model: AgentModelOpt = None,
    agent_tokens: AgentTokensOpt = None,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", help="Most requests in one forward pass (halved on CUDA out-of-memory).",
                          rich_help_panel=BATCHING)
    ] = 8,
    batch_wait_ms: Annotated[
        float, typer.Option("--batch-wait-ms", help="How long a request waits for others to share its forward "
                            "pass, at most.", rich_help_panel=BATCHING)
    ] = 10.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests that may wait for a pass; more are answered 503 with "
                          "Retry-After.", rich_help_panel=BATCHING)
    ] = 64,
    max_request_tokens: Annotated[
        int, typer.Option("--max-request-tokens", help="The most max_tokens one request may ask for (400 above).",
                          rich_help_panel=LIMITS)
    ] = 1024,
    max_prompt_chars: Annotated[
        int, typer.Option("--max-prompt-chars", help="The most characters of text in one request's messages "
                          "(400 above).", rich_help_panel=LIMITS)
    ] = 20_000,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", help="The largest request body, in MB (413 above).",
                            rich_help_panel=LIMITS)
    ] = 20.0,
    download_timeout: DownloadTimeoutOpt = 30.0,
    allow_private_urls: Annotated[
        bool, typer.Option("--allow-private-urls", help="Fetch image URLs on loopback, private and link-local "
                           "addresses too (refused by default, on every redirect).", rich_help_panel=LIMITS)
    ] = False,
    allowed_local_media_path: Annotated[
        str | None, typer.Option("--allowed-local-media-path", metavar="DIR", help="Read file:// image URLs, but "
                                 "only inside DIR (refused without it).", rich_help_panel=LIMITS)
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Deploy on Ray Serve: --replicas copies of the server, each loading the "
                           "model and batching (needs pip install 'mmtok-cli[serve,ray]').", rich_help_panel="Ray")
    ] = False,
    replicas: Annotated[int, typer.Option("--replicas", help="Ray Serve replicas (model copies).",
                                          rich_help_panel="Ray")] = 1,
    gpus_per_replica: Annotated[
        float, typer.Option("--gpus-per-replica", help="GPUs each replica reserves (0: CPU only).",
                            rich_help_panel="Ray")
    ] = 0.0,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Serve the model over HTTP with OpenAI's Chat Completions API; every request picks its own vision tokens.

    POST /v1/chat/completions takes OpenAI's request (one image per request, as an image_url part: a
    data:image/...;base64 URL, http(s), or file:// under --allowed-local-media-path) plus an optional
    "mmtok" object of per-request options: tokens, method, budget, question_words, alpha, tau_t, tau_v, agent,
    agent_tokens (defaults: this command's flags). Replies are chat.completion objects (or a stream of chunks)
    with usage.prompt_tokens the pruned prompt the model read, usage.prompt_tokens_details.image_tokens the
    vision tokens kept, and an "mmtok" object with the fields of `mmtok ask --json` plus batch_size. Also
    GET /v1/models, GET /health (200 once the model is loaded) and GET /metrics (Prometheus).

    Concurrent requests share forward passes (--max-batch-size, --batch-wait-ms); temperature 0 (or absent, when
    the checkpoint's generation config decodes greedily) gives exactly `mmtok ask`'s answer.

    Examples:

      mmtok serve --model demo --port 8000

      mmtok serve --model llava-hf/llava-1.5-7b-hf --tokens 64 --max-batch-size 16 --api-key "$KEY"

      mmtok serve --model demo --ray --replicas 2

      mmtok serve --arch cpu-small   (random weights: for load tests)
    """
    from ..errors import UsageError
    from ..serve.options import ServeOptions

    def work() -> None:
        if model and arch:
            raise UsageError("give --model or --arch, not both")
        options = ServeOptions(
            model=model or DEFAULT_MODEL, arch=arch, device=device, dtype=dtype, cache_mb=cache_mb,
            pan_and_scan=pan_and_scan, host=host, port=port, api_key=api_key,
            tokens=tokens, method=method, max_new_tokens=max_new_tokens,
            selection=selection_params(alpha=alpha, tau_t=tau_t, tau_v=tau_v, budget=budget,
                                       question_words=question_words),
            agent=agent, agent_model=agent_model, agent_tokens=agent_tokens, max_batch_size=max_batch_size,
            batch_wait_ms=batch_wait_ms, max_queue=max_queue, max_request_tokens=max_request_tokens,
            max_prompt_chars=max_prompt_chars, max_body_mb=max_body_mb, download_timeout=download_timeout,
            allow_private_urls=allow_private_urls, allowed_local_media_path=allowed_local_media_path, debug=debug,
        )
        options.check()
        if not ray and (replicas != 1 or gpus_per_replica or ray_address):
            raise UsageError("--replicas, --gpus-per-replica and --ray-address need --ray")
        if replicas < 1 or gpus_per_replica < 0:
            raise UsageError("--replicas must be at least 1 and --gpus-per-replica at least 0")
        try:
            import fastapi  # noqa: F401
            import prometheus_client  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise UsageError("mmtok serve needs FastAPI, uvicorn and prometheus_client: "
                             "pip install 'mmtok-cli[serve]'") from None
        from ..models.registry import check_model, check_pan_and_scan

        if arch is None:
            check_model(options.model)  # seconds, before anything listens
            check_pan_and_scan(options.model, pan_and_scan)
        if agent_model is not None:
            from ..engine import check_agent_model

            check_agent_model(agent_model)

        def announce(where: str) -> None:
            err.print(f"mmtok serve: {options.name} on {where}/v1 (OpenAI Chat Completions; GET /health says when the "
                      "model is loaded)", highlight=False, markup=False)

        if ray:
            from ..serve.ray_serve import run_on_ray

            run_on_ray(options, replicas=replicas, gpus_per_replica=gpus_per_replica, address=ray_address,
                       announce=announce, say=lambda line: err.print(line, highlight=False, markup=False))
        else:
            from ..serve.server import run_local

            run_local(options, announce=announce)

    guarded(debug, work)
