"""Encode each image once: a byte-bounded cache of images' vision tokens (V, U, masks), keyed by their pixels.

Real workloads ask many questions about each image (POPE: 18 per COCO image over its three files; `mmtok eval`:
every method x budget), and the vision encoder is a large share of a pruned run. The engine looks each
image up here by `image_key` (a hash of its decoded pixels, so two paths or URLs to the same picture share one
entry); it encodes only the images it does not find, each once even when several items of the batch show it,
and stores them. Entries are one image's tokens (`VisionTokens.split`), evicted least recently used first
when the bytes they hold pass the bound. Answers do not change: an entry is exactly what encoding the image
again would give (batch padding is rebuilt by `VisionTokens.join`).

An item of several images or videos is one entry, keyed by all its inputs (`visual_key`); a video by its sampled
frames.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

DEFAULT_MB = {"cpu": 2048, "cuda": 4096}
"""The bound when none is given, per device type (MB of tensors): ~150 LLaVA-1.5 images in float32 on CPU,
~550 in bfloat16 on a GPU (one POPE file's 500 COCO images); other devices get the CPU's."""
GPU_SHARE = 0.05
"""On a GPU, the default bound is also at most this share of its memory (a 24 GB card: 1.2 GB)."""


def default_mb(device: torch.device) -> int:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return min(DEFAULT_MB["cuda"], int(total * GPU_SHARE) // 2**20)
    return DEFAULT_MB.get(device.type, DEFAULT_MB["cpu"])


def image_key(image: Image.Image, salt: str = "") -> str:
    """A digest of the image's decoded pixels, mode and size (and `salt`: processing settings that change its
    tokens), so the same picture from two files or URLs is one entry and two pictures never are."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.width}x{image.height}:{salt}:".encode())
    for strip in pixel_strips(image):
        digest.update(strip)
    return digest.hexdigest()


def video_key(video: Any, salt: str = "") -> str:
    """A digest of a video's sampled frames and which frames of the file they are (their timing reaches the model:
    Qwen's temporal positions and timestamps), so the same clip sampled alike is one entry."""
    digest = hashlib.blake2b(digest_size=16)
    info = video.info
    digest.update(f"video:{video.frames.shape}:{video.indices}:{info.fps}:{info.total_frames}:{salt}:".encode())
    digest.update(video.frames.tobytes())
    return digest.hexdigest()


def visual_key(entry: Any, salt: str = "") -> str:
    """An item's key: `image_key` for one image (so a single image's key is the same as ever), `video_key` for one
    video, and for several inputs a digest of their keys in prompt order."""
    from .video import is_video

    if isinstance(entry, (list, tuple)):
        if len(entry) == 1:
            return visual_key(entry[0], salt)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(("items:" + ",".join(visual_key(v, salt) for v in entry)).encode())
        return digest.hexdigest()
    return video_key(entry, salt) if is_video(entry) else image_key(entry, salt)


STRIP_BYTES = 4 * 2**20


def pixel_strips(image: Image.Image) -> Iterator[bytes]:
    """`image.tobytes()` in pieces of whole rows (about STRIP_BYTES each), for hashing a large image without a
    second copy of all its pixels."""
    rows = max(1, STRIP_BYTES // max(1, len(image.getbands()) * image.width))
    if rows >= image.height:
        yield image.tobytes()
        return
    for top in range(0, image.height, rows):
        yield image.crop((0, top, image.width, min(top + rows, image.height))).tobytes()


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in `value` (a tensor, or lists, tuples and dataclass fields holding them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(tensor_bytes(getattr(value, name)) for name in value.__dataclass_fields__)
    return 0


@dataclass
class CacheStats:
    hits: int = 0
    """Items whose tokens were found (in the cache, or encoded for an earlier item of the same batch)."""
    misses: int = 0
    """Images encoded."""
    evictions: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions}


class VisionCache:
    """Least-recently-used entries of any value, bounded by the bytes of their tensors."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("the cache bound must be at least 0 bytes")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.stats = CacheStats()
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Any | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, value: Any) -> None:
        """Store `value` (its tensors must own their storage: a view would pin its whole base); one larger
        than the bound is not stored."""
        size = tensor_bytes(value)
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[1]
        if size > self.max_bytes:
            return
        while self.bytes + size > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.stats.evictions += 1
        self._entries[key] = (value, size)
        self.bytes += size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def shrink(self) -> None:
        """Empty the cache and halve its bound: the model ran out of memory, and the cache must not grow back into
        what the batches need."""
        self.clear()
        self.max_bytes //= 2
