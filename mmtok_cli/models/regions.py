"""Which part of the original image each vision token saw: the geometry behind `mmtok show`.

Image processors only resize, pad and crop, so the way from the original image to the pixels a
token's patch covers is, per axis, `canvas = original * scale + offset`. The adapters compose those
steps from the processor's own config and the image size (the numbers the processor uses) and map
each token's patch back with the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MmtokError

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels of the original image; x1 and y1 are exclusive."""


@dataclass
class TokenRegions:
    """One image's vision tokens as regions of the original image, numbered like `kept_indices`."""

    boxes: list[Box]
    """One box per token, clipped to the image: a token that saw only padding has an empty box (zero area)."""
    panel: list[int]
    """The picture each token is drawn on, as an index into `panels`."""
    panels: tuple[str, ...] = ("image",)
    """Names of the pictures (LLaVA-NeXT: its coarse base view and its high-resolution crops)."""


@dataclass(frozen=True)
class Placement:
    """Where the original image lies on a canvas, per axis: canvas = original * scale + offset."""

    scale_x: float = 1.0
    scale_y: float = 1.0
    off_x: float = 0.0
    off_y: float = 0.0

    def then(self, scale_x: float = 1.0, scale_y: float = 1.0, off_x: float = 0.0, off_y: float = 0.0) -> Placement:
        """This placement followed by one more step on the canvas."""
        return Placement(
            self.scale_x * scale_x, self.scale_y * scale_y, self.off_x * scale_x + off_x, self.off_y * scale_y + off_y
        )

    def to_original(self, box: Box) -> Box:
        x0, y0, x1, y1 = box
        return (
            (x0 - self.off_x) / self.scale_x,
            (y0 - self.off_y) / self.scale_y,
            (x1 - self.off_x) / self.scale_x,
            (y1 - self.off_y) / self.scale_y,
        )


def size_value(size: Any, key: str) -> int | None:
    """A field of a processor's `size` / `crop_size`, which may be a dict or a SizeDict."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def resize_target(size: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) the processor resizes a `height` x `width` canvas to, for its `size` setting."""
    from transformers.image_transforms import get_size_with_aspect_ratio

    shortest, longest = size_value(size, "shortest_edge"), size_value(size, "longest_edge")
    if shortest and longest:
        return get_size_with_aspect_ratio((height, width), shortest, longest)
    if shortest:  # as transformers' get_resize_output_image_size(default_to_square=False)
        short, long = sorted((height, width))
        long_new = int(shortest * long / short)
        return (shortest, long_new) if height <= width else (long_new, shortest)
    h, w = size_value(size, "height"), size_value(size, "width")
    if h and w:
        return h, w
    raise MmtokError(f"cannot map vision tokens to the image for the processor's size setting {dict(size)}")


def resize_and_crop(
    image_processor: Any, placement: Placement, height: int, width: int
) -> tuple[Placement, tuple[int, int]]:
    """The processor's resize (`do_resize`, `size`) then center crop (`do_center_crop`, `crop_size`) of a canvas.

    Returns the new placement and canvas (height, width). The crop offset is -floor((size - crop) / 2)
    per axis, which is also where transformers puts the image when the crop is larger and pads instead.
    """
    ip = image_processor
    if getattr(ip, "do_resize", True):
        new_h, new_w = resize_target(ip.size, height, width)
        placement = placement.then(new_w / width, new_h / height)
        height, width = new_h, new_w
    if getattr(ip, "do_center_crop", False):
        crop_h, crop_w = size_value(ip.crop_size, "height"), size_value(ip.crop_size, "width")
        placement = placement.then(off_x=-((width - crop_w) // 2), off_y=-((height - crop_h) // 2))
        height, width = crop_h, crop_w
    return placement, (height, width)


def cell_box(row: int, col: int, cell_h: float, cell_w: float, top: float = 0.0, left: float = 0.0) -> Box:
    """The (row, col) cell of a grid of `cell_h` x `cell_w` cells whose corner is at (left, top)."""
    return (left + col * cell_w, top + row * cell_h, left + (col + 1) * cell_w, top + (row + 1) * cell_h)


def clip(box: Box, height: int, width: int) -> Box:
    """`box` clipped to a `height` x `width` image; a box outside it becomes empty (x0 == x1 or y0 == y1)."""
    x0, y0, x1, y1 = (min(max(v, 0.0), float(limit)) for v, limit in zip(box, (width, height, width, height)))
    return (x0, y0, max(x0, x1), max(y0, y1))


def area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])
