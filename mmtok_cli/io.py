"""Reading user inputs (images) and writing outputs."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import MmtokError


def load_image(source: str) -> Image.Image:
    """Open an image file (or '-' for stdin) fully and as RGB, or explain in one line why not."""
    if source == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise MmtokError("no image data on stdin")
        return _decode(io.BytesIO(data), "stdin")
    path = Path(source).expanduser()
    if not path.exists():
        raise MmtokError(f"image not found: {source}")
    if path.is_dir():
        raise MmtokError(f"'{source}' is a folder, not an image")
    return _decode(path, source)


def _decode(fp: Path | io.BytesIO, name: str) -> Image.Image:
    try:
        with Image.open(fp) as image:
            image.load()  # decode now: a truncated file fails here, not halfway through the model
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise MmtokError(f"'{name}' is not an image PIL can read (unknown or corrupt format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MmtokError(f"'{name}' could not be decoded as an image: {exc}") from None
