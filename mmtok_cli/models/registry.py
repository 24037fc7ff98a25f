"""Which adapter handles a checkpoint, and loading a checkpoint with clear errors."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .. import demo
from ..errors import MmtokError, UsageError, first_line
from .base import Adapter
from .gemma3 import Gemma3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen_vl import Qwen3VLAdapter, Qwen35Adapter, Qwen35MoeAdapter, QwenVLAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaAdapter, LlavaNextAdapter, QwenVLAdapter, Qwen3VLAdapter, Qwen35Adapter, Qwen35MoeAdapter, Gemma3Adapter,
    InternVLAdapter, LlavaOnevisionAdapter,
)


def supported() -> str:
    return ", ".join(f"{a.family} (e.g. {a.example})" for a in ADAPTERS)


def adapter_class(model_type: str) -> type[Adapter]:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise MmtokError(f"model type '{model_type}' is not supported; supported families: {supported()}")


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine fails in seconds instead of after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _locate(model: str) -> tuple[Callable[..., Any], type[Adapter]]:
    """Find `model` (folder or hub id) and its family from config.json alone; returns a loader that
    turns transformers' errors into one-line MmtokErrors, and the adapter class."""
    from transformers import PreTrainedConfig

    path = Path(model).expanduser()
    if model == demo.NAME and not path.exists():  # a folder called "demo" in the working directory still wins
        path = demo.CHECKPOINT
        if not (path / "config.json").is_file():
            raise MmtokError(f"the demo checkpoint is missing from {path}; reinstall mmtok-cli, or train it with "
                             f"`python -m mmtok_cli.demo.train --out {path}`")
    if path.is_dir():
        source, local_only, hub = str(path), True, False
        if not (path / "config.json").is_file():
            raise MmtokError(f"'{model}' is a folder but has no config.json; point --model at a checkpoint folder")
    elif path.exists():
        raise MmtokError(f"--model must be a checkpoint folder or a hub id, but '{model}' is a file")
    elif _looks_like_path(model):
        raise MmtokError(f"no model folder at '{model}'")
    else:
        source, local_only, hub = model, not _hub_reachable(), True

    def load(fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(source, local_files_only=local_only, **kwargs)
        except MmtokError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for bad checkpoints
            if hub and local_only and isinstance(exc, OSError):
                raise MmtokError(
                    f"model '{model}' is not in the local Hugging Face cache and the hub cannot be reached; "
                    f"download it once where there is internet (`hf download {model}`) "
                    "or pass --model /path/to/local/checkpoint-folder"
                ) from exc
            if hub and isinstance(exc, OSError):
                raise MmtokError(
                    f"could not find '{model}' on the Hugging Face hub (typo? gated?): {first_line(exc)}"
                ) from exc
            raise MmtokError(f"could not load model '{model}': {first_line(exc)}") from exc

    # The raw config dict names the family even when this transformers version cannot build it.
    config, _ = load(PreTrainedConfig.get_config_dict)
    if "model_type" not in config:
        raise MmtokError(f"'{model}' has a config.json without model_type; is it a transformers checkpoint?")
    return load, adapter_class(config["model_type"])


def check_model(model: str) -> type[Adapter]:
    """The family of `model`, or a one-line MmtokError, without loading weights (seconds, not minutes)."""
    return _locate(model)[1]


def check_pan_and_scan(model: str, pan_and_scan: bool | None) -> None:
    """Pan-and-scan asked of a family that has it, or a one-line usage error (from config.json: seconds, before
    any weights load). Turning it off is what every other family does anyway, so that is never an error."""
    if not pan_and_scan:
        return
    family = check_model(model)
    if not family.has_pan_and_scan:
        have = ", ".join(a.family for a in ADAPTERS if a.has_pan_and_scan)
        raise UsageError(f"--pan-and-scan: {family.family} models have no pan-and-scan (only {have} crops long "
                         "images into extra views)")


def load_adapter(model: str, *, device: torch.device, dtype: torch.dtype, random_weights: bool = False) -> Adapter:
    """Load config, processor and weights of `model` (hub id or local folder) and wrap them.

    `random_weights=True` builds the model from its config with random weights instead of loading
    them (speed measurements of real architectures; the folder needs no weight files).
    """
    load, adapter_cls = _locate(model)
    processor = load(adapter_cls.load_processor)
    if random_weights:
        from transformers import AutoConfig, GenerationConfig

        from ..archs import random_model

        net = random_model(adapter_cls.model_class(), load(AutoConfig.from_pretrained), device=device, dtype=dtype)
        try:
            net.generation_config = load(GenerationConfig.from_pretrained)
        except MmtokError:  # no generation_config.json: keep the one derived from the config
            pass
        return adapter_cls(net, processor)
    net = load(adapter_cls.model_class().from_pretrained, dtype=dtype)
    net.to(device).eval()
    return adapter_cls(net, processor)
