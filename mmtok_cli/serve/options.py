"""The server's settings: what `mmtok serve`'s flags set, checked before anything loads.

No torch, FastAPI or Ray here: the CLI rejects bad flags in milliseconds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..io import URL_TIMEOUT_S
from ..options import DEFAULT_MODEL, check_agent, check_cache, check_options

API_KEY_ENV = "MMTOK_API_KEY"


@dataclass
class ServeOptions:
    model: str = DEFAULT_MODEL
    arch: str | None = None
    """Serve this architecture (`archs.ARCHS`) with random weights instead of `model`: load tests."""
    device: str = "auto"
    dtype: str = "auto"
    cache_mb: int | None = None
    pan_and_scan: bool | None = None
    """Gemma 3's crops of long images (None: the checkpoint's setting)."""
    host: str = "127.0.0.1"
    port: int = 8000
    """0: any free port (the one chosen is printed)."""
    api_key: str | None = None
    """Every route but /health demands `Authorization: Bearer <api_key>`; None: no key."""
    # A request's defaults: the same names and meaning as `mmtok batch`'s flags.
    tokens: int = 64
    method: str = "mmtok"
    max_new_tokens: int = 64
    selection: dict[str, float | str] = field(default_factory=dict)
    """alpha / tau_t / tau_v / budget / question_words set on the command line (`options.selection_params`)."""
    agent: bool = False
    agent_model: str | None = None
    agent_tokens: int | None = None
    # Batching.
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    """How long the first request of a pass waits for others to join it."""
    max_queue: int = 64
    """Requests waiting for a pass (their images loading or loaded); one more is answered 503."""
    # Bounds on one request.
    max_request_tokens: int = 1024
    """The most tokens one request may ask to generate (max_tokens)."""
    max_prompt_chars: int = 20_000
    """The most characters of text in one request's messages."""
    max_body_mb: float = 20.0
    download_timeout: float = URL_TIMEOUT_S
    allow_private_urls: bool = False
    allowed_local_media_path: str | None = None
    """file:// image URLs are read only inside this folder; None: refused."""
    debug: bool = False

    def check(self) -> None:
        """One-line usage errors for impossible settings, before the model loads."""
        check_options(tokens=self.tokens, method=self.method, max_new_tokens=self.max_new_tokens, dtype=self.dtype,
                      device=self.device)
        check_agent(agent=self.agent, method=self.method, agent_model=self.agent_model,
                    agent_tokens=self.agent_tokens)
        check_cache(self.cache_mb)
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port must be 0 (any free port) to 65535 (got {self.port})")
        for flag, value in (("--max-batch-size", self.max_batch_size), ("--max-queue", self.max_queue),
                            ("--max-request-tokens", self.max_request_tokens),
                            ("--max-prompt-chars", self.max_prompt_chars)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1 (got {value})")
        if self.max_new_tokens > self.max_request_tokens:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens} is over --max-request-tokens "
                             f"{self.max_request_tokens}")
        for flag, value in (("--batch-wait-ms", self.batch_wait_ms), ("--max-body-mb", self.max_body_mb),
                            ("--download-timeout", self.download_timeout)):
            if not (math.isfinite(value) and value >= 0) or value == 0 and flag != "--batch-wait-ms":
                raise UsageError(f"{flag} must be a number above 0 (got {value})")
        if self.arch is not None:
            from ..archs import ARCHS

            if self.arch not in ARCHS:
                raise UsageError(f"unknown --arch '{self.arch}'; known: {', '.join(ARCHS)}")
            if self.agent_model is not None or self.pan_and_scan is not None:
                raise UsageError("--agent-model and --pan-and-scan go with --model, not --arch")
        if self.api_key is not None and not self.api_key.strip():
            raise UsageError(f"--api-key (or {API_KEY_ENV}) is empty")
        if self.allowed_local_media_path is not None:
            folder = Path(self.allowed_local_media_path).expanduser()
            if not folder.is_dir():
                raise UsageError(f"--allowed-local-media-path '{self.allowed_local_media_path}' is not a folder")
            self.allowed_local_media_path = os.path.realpath(folder)

    @property
    def name(self) -> str:
        """The model's id in the API (`model` in requests, GET /v1/models)."""
        return self.arch or self.model

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1e6)
