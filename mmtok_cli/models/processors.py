"""Loading a checkpoint's processor, with an image-only fallback where the full one cannot load.

transformers 5.x builds the processors of video-capable families (Qwen-VL, InternVL, LLaVA-OneVision,
...) with a video processor that needs torchvision, and refuses to load them without it. Images need
only the image processor and the tokenizer, so where the full processor cannot load we assemble the
family's own processor class from the checkpoint's parts without the video processor; the
processor's own code (placeholder expansion, token type ids) still does the work.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from ..errors import MmtokError

TORCHVISION_HINT = "install torchvision (matching your torch) to process videos"
_PARTS = {"image_processor", "tokenizer", "video_processor", "feature_extractor", "chat_template", "audio_tokenizer"}


def _checkpoint_json(source: str, name: str, **kwargs: Any) -> Any:
    """A JSON or text file of the checkpoint (folder or hub cache), or None where it has none."""
    from transformers.utils import cached_file

    path = cached_file(
        source, name, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False,
        **kwargs,
    )
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read() if name.endswith(".jinja") else json.load(f)


def chat_template(source: str, tokenizer: Any, **kwargs: Any) -> str | None:
    """The checkpoint's processor chat template (chat_template.jinja / .json), else the tokenizer's."""
    template = _checkpoint_json(source, "chat_template.jinja", **kwargs)
    if template is None:
        template = (_checkpoint_json(source, "chat_template.json", **kwargs) or {}).get("chat_template")
    return template or getattr(tokenizer, "chat_template", None)


def image_only(processor_cls: type) -> type:
    """`processor_cls` built without its video processor; asking it for videos is a one-line error."""

    class ImageOnly(processor_cls):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)

        def __call__(self, images: Any = None, text: Any = None, videos: Any = None, **kwargs: Any) -> Any:
            if videos is not None:
                raise MmtokError(f"this processor was assembled for images only; {TORCHVISION_HINT}")
            return super().__call__(images=images, text=text, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = f"{processor_cls.__name__}ImageOnly"
    return ImageOnly


def _settings(source: str, processor_cls: type, **kwargs: Any) -> dict[str, Any]:
    """The processor's own settings from processor_config.json (e.g. InternVL's `image_seq_length`)."""
    saved = _checkpoint_json(source, "processor_config.json", **kwargs) or {}
    accepted = inspect.signature(processor_cls.__init__).parameters
    return {key: value for key, value in saved.items() if key in accepted and key not in _PARTS}


def load_processor(source: str, processor_cls: type | None, **kwargs: Any) -> Any:
    """The checkpoint's full processor where it loads; else `processor_cls` assembled for images only.

    `processor_cls` None: the family has no video processor, so the full processor always loads.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    if processor_cls is None:
        return AutoProcessor.from_pretrained(source, **kwargs)
    full_error = None
    if is_torchvision_available():
        try:
            return AutoProcessor.from_pretrained(source, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- e.g. no video processor config; images need none
            full_error = exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        return image_only(processor_cls)(
            image_processor=AutoImageProcessor.from_pretrained(source, **kwargs),
            tokenizer=tokenizer,
            chat_template=chat_template(source, tokenizer, **kwargs),
            **_settings(source, processor_cls, **kwargs),
        )
    except Exception:
        if full_error is not None:  # the full processor's error says more
            raise full_error from None
        raise
