"""`mmtok show`: token -> image-region mapping for every family, and the pictures drawn from it.

The mapping is checked two ways: exact rectangles worked out by hand for known geometries, and,
for every token of every family, against the processor's own pixels: on an image whose red and
green channels are its x and y coordinates, the mean colour of the pixels a token's patch holds is
the centre of the region that token saw.
"""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from mmtok_cli.models.base import Prepared
from mmtok_cli.models.regions import area


@pytest.fixture(scope="module")
def engines(tmp_path_factory, engine):
    """Tiny engines of each family and preprocessing, by name."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_llava, build_tiny_llava_next, build_tiny_qwen_vl

    root = tmp_path_factory.mktemp("show-models")
    paths = {
        "llava-pad": build_tiny_llava(root / "llava-pad", pad_to_square=True),
        "llava-next": build_tiny_llava_next(root / "next"),
        "qwen2.5-vl": build_tiny_qwen_vl(root / "qwen25", version="2.5"),
        "qwen3-vl": build_tiny_qwen_vl(root / "qwen3", version="3"),
    }
    return {"llava": engine, **{name: Engine(str(p), device="cpu", dtype="float32") for name, p in paths.items()}}


def ramp(width: int, height: int) -> Image.Image:
    """Red = x, green = y (so sizes up to 256 px)."""
    y, x = np.mgrid[:height, :width]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


def _unnormalize(pixels: torch.Tensor, ip) -> torch.Tensor:
    """(..., 3, ...) channel-first processor output back to 0..255 values."""
    shape = [1] * pixels.ndim
    shape[-3] = 3
    mean, std = torch.tensor(ip.image_mean).view(shape), torch.tensor(ip.image_std).view(shape)
    return (pixels * std + mean) * 255


def patch_centres(engine, prepared: Prepared) -> torch.Tensor:
    """(n, 2) mean (x, y) colour of each token's pixels, in the model's token order, from the processor output."""
    adapter, inputs = engine.adapter, prepared.inputs
    ip = adapter.processor.image_processor
    if engine.adapter.family.startswith("qwen"):
        merge, patch = ip.merge_size, ip.patch_size
        rows = inputs["pixel_values"].view(-1, merge * merge, 3, ip.temporal_patch_size, patch, patch)
        return _unnormalize(rows.transpose(2, 3), ip).mean((1, 2, 4, 5))[:, :2]
    vc = adapter.model.config.vision_config
    side = vc.image_size // vc.patch_size
    views = _unnormalize(inputs["pixel_values"].view(-1, 3, vc.image_size, vc.image_size), ip)
    cells = views[:, :2].reshape(-1, 2, side, vc.patch_size, side, vc.patch_size).mean((3, 5))
    cells = cells.flatten(2).transpose(1, 2)  # (views, side * side, 2), row-major per view
    if adapter.family == "llava":
        return cells[0]
    # LLaVA-NeXT: the model's own packing of the views, newlines (NaN) dropped
    packed, _ = adapter.model.model.pack_image_features(
        [cells[: len(cells)]], inputs["image_sizes"], "default", image_newline=torch.full((2,), float("nan"))
    )
    return packed[0][~packed[0].isnan().any(-1)]


@pytest.mark.parametrize("family", ["llava", "llava-pad", "llava-next", "qwen2.5-vl", "qwen3-vl"])
@pytest.mark.parametrize("size", [(200, 120), (90, 200), (170, 120)])
def test_every_token_region_holds_the_pixels_the_processor_gave_it(engines, family, size):
    engine = engines[family]
    width, height = size
    prepared = engine.prepare([ramp(width, height)], ["What is here?"])
    regions = engine.adapter.token_regions(prepared, 0)
    centres = patch_centres(engine, prepared)
    assert len(regions.boxes) == len(centres) == engine.adapter.encode(prepared).counts[0]
    checked = 0
    for box, (x, y) in zip(regions.boxes, centres.tolist()):
        x0, y0, x1, y1 = box
        if x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height:
            continue  # touches the border: clipped padding or resampling edge effects
        # pixel i holds value i and spans [i, i + 1): a region's mean value is its centre minus a half
        assert abs(x - ((x0 + x1) / 2 - 0.5)) < 1.0 and abs(y - ((y0 + y1) / 2 - 0.5)) < 1.0, (box, x, y)
        checked += 1
    assert checked >= 4


def _swap_image_processor(engine, image_processor):
    """The engine's adapter (real model config) with another image processor: geometry at real sizes."""
    adapter = copy.copy(engine.adapter)
    adapter.processor = copy.copy(adapter.processor)
    adapter.processor.image_processor = image_processor
    return adapter


def _prepared(image_processor, width, height) -> Prepared:
    pixels = image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")
    return Prepared(inputs=pixels, image_sizes=[(height, width)])


def test_llava_center_crop_keeps_the_central_square(engine):
    """672x336 on a 336-px CLIP (llava-1.5-7b's processor): resize is a no-op, the crop starts at x = 168."""
    from transformers import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    boxes = _swap_image_processor(engine, ip).token_regions(_prepared(ip, 672, 336), 0).boxes
    assert boxes == [(168 + 14 * c, 14 * r, 182 + 14 * c, 14 * r + 14) for r in range(24) for c in range(24)]


def test_llava_pad_to_square_rows_of_padding_map_outside_the_image(engine):
    """672x336 padded to a 672 square (image at y = 168), resized to 336: each token covers 28x28 pixels,
    and the top and bottom 6 token rows are padding only."""
    from transformers import LlavaImageProcessorPil

    ip = LlavaImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True)
    boxes = _swap_image_processor(engine, ip).token_regions(_prepared(ip, 672, 336), 0).boxes
    for r in range(24):
        for c in range(24):
            box = boxes[24 * r + c]
            if 6 <= r < 18:
                assert box == (28 * c, 28 * r - 168, 28 * c + 28, 28 * r - 140)
            else:
                assert area(box) == 0 and box[0] == 28 * c


def test_llava_next_base_view_and_crops(engines):
    """Tiny NeXT: 56-px views of 4x4 tokens; a 112x56 image fits the 56x112 grid exactly (two crops)."""
    adapter = engines["llava-next"].adapter
    prepared = engines["llava-next"].prepare([Image.new("RGB", (112, 56))], ["q"])
    regions = adapter.token_regions(prepared, 0)
    base = [(28 * c, 14 * r, 28 * c + 28, 14 * r + 14) for r in range(4) for c in range(4)]  # squashed to 56x56
    crops = [(14 * c, 14 * r, 14 * c + 14, 14 * r + 14) for r in range(4) for c in range(8)]  # stitched, row-major
    assert regions.boxes == base + crops
    assert regions.panel == [0] * 16 + [1] * 32 and regions.panels == ("base", "crops")


def test_llava_next_unpadding_drops_padding_columns(engines):
    """An 80x56 image is pasted at x = 16 in the 112x56 grid; the model's unpadding drops one token column
    on each side, and the outer kept columns map partly outside the image (clipped)."""
    adapter = engines["llava-next"].adapter
    prepared = engines["llava-next"].prepare([Image.new("RGB", (80, 56))], ["q"])
    regions = adapter.token_regions(prepared, 0)
    base = [pytest.approx((20 * c, 14 * r, 20 * c + 20, 14 * r + 14)) for r in range(4) for c in range(4)]
    crops = [(max(14 * c - 16, 0), 14 * r, min(14 * c - 2, 80), 14 * r + 14) for r in range(4) for c in range(1, 7)]
    assert regions.boxes == base + crops


@pytest.mark.parametrize("family,size,cell", [("qwen2.5-vl", (112, 56), 28), ("qwen2.5-vl", (100, 50), 25),
                                              ("qwen3-vl", (128, 64), 32)])
def test_qwen_merged_tokens_cover_blocks_of_the_resized_grid(engines, family, size, cell):
    """Merged 2x2 patches: 28 px (Qwen2.5, patch 14) or 32 px (Qwen3, patch 16) squares of the resized image;
    100x50 is resized to 112x56, so its tokens cover 25-px squares of the original."""
    engine = engines[family]
    prepared = engine.prepare([Image.new("RGB", size)], ["q"])
    boxes = engine.adapter.token_regions(prepared, 0).boxes
    assert boxes == [pytest.approx((cell * c, cell * r, cell * c + cell, cell * r + cell)) for r in range(2)
                     for c in range(4)]
