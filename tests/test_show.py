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
from PIL import Image, ImageDraw

from mmtok_cli import show
from mmtok_cli.models.base import Prepared
from mmtok_cli.models.regions import area

from .device import TEST_DEVICE


@pytest.fixture(scope="module")
def engines(tmp_path_factory, engine):
    """Tiny engines of each family and preprocessing, by name."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import (
        build_tiny_internvl,
        build_tiny_llava,
        build_tiny_llava_next,
        build_tiny_llava_onevision,
        build_tiny_qwen_vl,
    )

    root = tmp_path_factory.mktemp("show-models")
    paths = {
        "llava-pad": build_tiny_llava(root / "llava-pad", pad_to_square=True),
        "llava-next": build_tiny_llava_next(root / "next"),
        "qwen2.5-vl": build_tiny_qwen_vl(root / "qwen25", version="2.5"),
        "qwen3-vl": build_tiny_qwen_vl(root / "qwen3", version="3"),
        "internvl": build_tiny_internvl(root / "internvl"),
        "llava-onevision": build_tiny_llava_onevision(root / "onevision"),
        # every multi-crop grid shrunk: crop tokens blend neighbouring patches
        "llava-onevision-shrunk": build_tiny_llava_onevision(root / "shrunk", vision_aspect_ratio="anyres_max_1"),
    }
    return {"llava": engine, **{name: Engine(str(p), device=TEST_DEVICE, dtype="float32") for name, p in paths.items()}}


def ramp(width: int, height: int) -> Image.Image:
    """Red = x, green = y (so sizes up to 256 px)."""
    y, x = np.mgrid[:height, :width]
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))


def _unnormalize(pixels: torch.Tensor, ip) -> torch.Tensor:
    """(..., 3, ...) channel-first processor output back to 0..255 values."""
    shape = [1] * pixels.ndim
    shape[-3] = 3
    mean, std = (torch.tensor(v, device=pixels.device).view(shape) for v in (ip.image_mean, ip.image_std))
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
    # InternVL's config keeps (height, width) pairs; the tiny ones are square
    size, patch = (v[0] if isinstance(v, (list, tuple)) else v for v in (vc.image_size, vc.patch_size))
    side = size // patch
    views = _unnormalize(inputs["pixel_values"].view(-1, 3, size, size), ip)
    cells = views[:, :2].reshape(-1, 2, side, patch, side, patch).mean((3, 5))
    cells = cells.flatten(2).transpose(1, 2)  # (views, side * side, 2), row-major per view
    if adapter.family == "llava":
        return cells[0]
    if adapter.family == "internvl":  # each token holds a 2x2 block of patches (the model's pixel shuffle)
        blocks = adapter.model.model.pixel_shuffle(cells.reshape(len(cells), side, side, 2).contiguous(), 0.5)
        return blocks.reshape(-1, 4, 2).mean(1)  # views in order: tiles, then the thumbnail
    # LLaVA-NeXT / -OneVision: the model's own packing of the views (OneVision's shrink blends the patches' mean
    # colours as it blends their features), newlines (NaN) dropped
    newline = torch.full((2,), float("nan"), device=cells.device)
    if adapter.family == "llava-onevision":
        packed, _ = adapter.model.model.pack_image_features(
            [cells], inputs["image_sizes"], image_newline=newline,
            vision_aspect_ratio=adapter.model.config.vision_aspect_ratio,
        )
    else:
        packed, _ = adapter.model.model.pack_image_features(
            [cells[: len(cells)]], inputs["image_sizes"], "default", image_newline=newline
        )
    return packed[0][~packed[0].isnan().any(-1)]


@pytest.mark.parametrize("family", ["llava", "llava-pad", "llava-next", "qwen2.5-vl", "qwen3-vl", "internvl",
                                    "llava-onevision", "llava-onevision-shrunk"])
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


def test_llava_onevision_shrunk_crop_grid_tokens_cover_their_cells(engines):
    """anyres_max_1: a 112x112 image's 8x8 crop grid is shrunk to 4x4, so each crop token covers 2x2 patches."""
    adapter = engines["llava-onevision-shrunk"].adapter
    regions = adapter.token_regions(engines["llava-onevision-shrunk"].prepare([Image.new("RGB", (112, 112))], ["q"]), 0)
    cells = [pytest.approx((28 * c, 28 * r, 28 * c + 28, 28 * r + 28)) for r in range(4) for c in range(4)]
    assert regions.boxes == cells + cells  # the base view squashed to 56 px: also 28-px cells
    assert regions.panel == [0] * 16 + [1] * 16


@pytest.fixture(scope="module")
def onevision_7b(engines):
    """The real LLaVA-OneVision-7B geometry (meta-device model: config only) with its real image processor."""
    from transformers import LlavaOnevisionImageProcessorPil

    from mmtok_cli.archs import build_config
    from mmtok_cli.models.llava_onevision import LlavaOnevisionAdapter

    with torch.device("meta"):
        model = LlavaOnevisionAdapter.model_class()(build_config("llava-onevision-qwen2-7b"))
    ip = LlavaOnevisionImageProcessorPil()  # 384-px views, grids of 1x1 to 6x6 views
    adapter = _swap_image_processor(engines["llava-onevision"], ip)
    return LlavaOnevisionAdapter(model, adapter.processor), ip


def test_llava_onevision_7b_crops_skip_the_pixels_siglip_leaves_unused(onevision_7b):
    """768x768: base view at half scale; 2x2 crops of 384 px, of which SigLIP's 27 patches of 14 px use 378."""
    adapter, ip = onevision_7b
    boxes = adapter.token_regions(_prepared(ip, 768, 768), 0).boxes
    base = [(28 * c, 28 * r, 28 * c + 28, 28 * r + 28) for r in range(27) for c in range(27)]
    edge = [384 * (t // 27) + 14 * (t % 27) for t in range(54)]
    crops = [(edge[c], edge[r], edge[c] + 14, edge[r] + 14) for r in range(54) for c in range(54)]
    assert boxes == base + crops


def test_llava_onevision_7b_shrunk_tokens_span_crop_borders(onevision_7b):
    """2304x2304: a 6x6 grid of crops is 162x162 patches, shrunk to 81x81 (anyres_max_9): a token covers 2x2
    patches, and one straddling a crop border covers the last patch of one crop and the first of the next."""
    adapter, ip = onevision_7b
    boxes = adapter.token_regions(_prepared(ip, 2304, 2304), 0).boxes
    assert len(boxes) == 27 * 27 + 81 * 81
    crops = boxes[27 * 27 :]
    assert crops[0] == (0, 0, 28, 28)
    assert crops[81 * 12 + 12] == (336, 336, 364, 364)
    assert crops[81 * 13 + 13] == (364, 364, 398, 398)  # patch 26 of crop 0 to patch 0 of crop 1 (378-384 unused)
    assert crops[81 * 14 + 14] == (398, 398, 426, 426)
    assert crops[-1] == (2270, 2270, 2298, 2298)


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


# -- pictures ----------------------------------------------------------------------------------------

COLOUR = (200, 150, 100)


def _answer(kept, total, text="a red circle", order=None):
    from mmtok_cli.engine import Answer

    return Answer(answer=text, output_ids=[], vision_total=total, vision_kept=len(kept), kept_indices=[kept],
                  kept_order=[list(kept if order is None else order)], prompt_unpruned=0, prompt_pruned=0)


def _pixels(picture, colour) -> int:
    return int((np.asarray(picture) == np.array(colour, dtype=np.uint8)).all(-1).sum())


def _dimmed(colour):
    return tuple(round(v * (1 - show.DIM) + d * show.DIM) for v, d in zip(colour, show.DARK))


def _assert_kept_bright_and_dropped_dimmed(picture, kept, colour=COLOUR):
    """A saved one-column picture of a square, one-colour image on the tiny LLaVA (8x8 tokens, 48-px cells at 384
    px): inside its outline each kept token's cell is the image's colour, each dropped token's cell is dimmed.
    The panel is found by its colours (the captions are grey text on white), the cells by the 8x8 grid."""
    pixels = np.asarray(picture.convert("RGB"))
    painted = np.zeros(pixels.shape[:2], dtype=bool)
    for c in (colour, _dimmed(colour), show.OUTLINE):
        painted |= (pixels == np.array(c, dtype=np.uint8)).all(-1)
    ys, xs = np.nonzero(painted)
    panel = pixels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert panel.shape[:2] == (384, 384)
    for i in range(64):
        row, col = divmod(i, 8)
        inside = panel[48 * row + 1 : 48 * row + 47, 48 * col + 1 : 48 * col + 47]
        assert (inside == np.array(colour if i in kept else _dimmed(colour), dtype=np.uint8)).all(), i


def test_kept_regions_stay_bright_and_dropped_ones_are_dimmed(engine):
    """112x112 on the tiny LLaVA: 8x8 tokens of 14 px, drawn at 384 px (48-px cells with 1-px outlines)."""
    image = Image.new("RGB", (112, 112), COLOUR)
    regions = engine.adapter.token_regions(engine.prepare([image], ["q"]), 0)
    results = [("mmtok", _answer([0, 9], 64)), ("full", _answer(list(range(64)), 64)), ("mmtok", _answer([], 64))]
    sheet = show.render(image, regions, results, model="tiny", question="Where is it?")
    column = show.PANEL_SIDE + show.GAP
    assert sheet.width == 3 * column + show.GAP
    first, second, third = (sheet.crop((show.GAP + i * column, 0, (i + 1) * column, sheet.height)) for i in range(3))
    # two kept 48x48 cells: their insides keep the image's colour, their edges are outlined, the rest is dimmed
    assert _pixels(first, COLOUR) == 2 * 46 * 46
    assert _pixels(first, show.OUTLINE) == 2 * (4 * 48 - 4)
    assert _pixels(first, _dimmed(COLOUR)) == 384 * 384 - 2 * 48 * 48
    assert _pixels(second, _dimmed(COLOUR)) == 0 and _pixels(second, COLOUR) > 0
    assert _pixels(third, _dimmed(COLOUR)) == 384 * 384 and _pixels(third, COLOUR) == 0


def test_llava_next_column_has_a_base_panel_and_a_crops_panel(engines):
    engine = engines["llava-next"]
    image = Image.new("RGB", (112, 56), COLOUR)
    regions = engine.adapter.token_regions(engine.prepare([image], ["q"]), 0)
    one = show.render(image, regions, [("mmtok", _answer([0], 48))], model="tiny")
    # base token 0 covers (0, 0, 28, 14) of the image: 96x48 of the 384x192 picture; no crop token is kept
    assert _pixels(one, _dimmed(COLOUR)) == 2 * 384 * 192 - 96 * 48
    assert one.width == show.PANEL_SIDE + 2 * show.GAP
    plain = show.render(image, engines["llava"].adapter.token_regions(engines["llava"].prepare([image], ["q"]), 0),
                        [("mmtok", _answer([0], 64))], model="tiny")
    assert one.height > plain.height + 192  # the second panel


def _cell(i, side=48, at=show.GAP):
    """Token i's 48-px cell of the tiny LLaVA's 8x8 grid in a one-column sheet with no question."""
    row, col = divmod(i, 8)
    return at + side * col, at + side * row, at + side * col + side, at + side * row + side


def test_numbers_show_the_pick_rank_inside_the_kept_regions_only(engine):
    image = Image.new("RGB", (112, 112), COLOUR)
    regions = engine.adapter.token_regions(engine.prepare([image], ["q"]), 0)
    picked = _answer([0, 9, 27], 64, order=[27, 0, 9])
    plain = np.asarray(show.render(image, regions, [("mmtok", picked)], model="tiny"))
    assert np.array_equal(plain, np.asarray(show.render(image, regions, [("mmtok", picked)], model="tiny",
                                                        numbers=False)))
    numbered = np.asarray(show.render(image, regions, [("mmtok", picked)], model="tiny", numbers=True))
    changed = (numbered != plain).any(-1)
    inside = np.zeros_like(changed)
    for i in (0, 9, 27):
        x0, y0, x1, y1 = _cell(i)
        assert changed[y0:y1, x0:x1].any(), i  # every kept region got its number
        inside[y0:y1, x0:x1] = True
    assert not (changed & ~inside).any()  # and nothing else changed
    # The rank, not the index: token 27, picked first, shows what token 0 shows when it is picked first.
    first_0 = np.asarray(show.render(image, regions, [("mmtok", _answer([0, 9, 27], 64))], model="tiny",
                                     numbers=True))
    patch = lambda picture, i: picture[_cell(i)[1] : _cell(i)[3], _cell(i)[0] : _cell(i)[2]]  # noqa: E731
    assert np.array_equal(patch(numbered, 27), patch(first_0, 0))
    assert np.array_equal(patch(numbered, 0), patch(first_0, 9))  # both "2"
    assert not np.array_equal(patch(numbered, 27), patch(first_0, 27))  # "1" vs "3"


def test_a_number_larger_than_its_region_is_left_out():
    font = show._font(show.NUMBER_SIZE)
    for rect, drawn in (((2, 2, 7, 7), False), ((2, 2, 40, 40), True)):
        canvas = Image.new("RGB", (50, 50), COLOUR)
        show._number(ImageDraw.Draw(canvas), rect, "12", font)
        assert (_pixels(canvas, COLOUR) < 50 * 50) is drawn


def test_picture_names_are_safe_and_distinct():
    assert show.picture_name(7) == "7.png" and show.picture_name("cat-01.jpg") == "cat-01.jpg.png"
    a, b = show.picture_name("a/b"), show.picture_name("a_b")
    assert a != b and a.startswith("a_b-") and "/" not in a
    assert show.picture_name("../..").endswith(".png") and not show.picture_name("../..").startswith(".")


# -- commands ----------------------------------------------------------------------------------------


def _run(*args):
    from typer.testing import CliRunner

    from mmtok_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_show_draws_methods_side_by_side_and_prints_their_answers(tiny_llava, image_file, engine, tmp_path):
    out = tmp_path / "kept.png"
    result = _run("show", image_file, "What colour is the cat?", "--model", tiny_llava, "--tokens", 8,
                  "--methods", "mmtok,full", "--max-new-tokens", 4, "--out", out)
    assert result.exit_code == 0, result.stderr
    from mmtok_cli.io import load_image

    picture = load_image(str(image_file))
    answers = {m: engine.ask(picture, "What colour is the cat?", method=m, tokens=8, max_new_tokens=4)
               for m in ("mmtok", "full")}
    assert result.stdout.splitlines() == [f"{m}: {a.answer}" for m, a in answers.items()]
    assert "mmtok 8/64 · full 64/64" in result.stderr
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.width == 2 * (show.PANEL_SIDE + show.GAP) + show.GAP
        expected = show.picture_for(engine, picture, "What colour is the cat?", list(answers.items()))
        assert np.array_equal(np.asarray(sheet.convert("RGB")), np.asarray(expected))


def test_show_numbers_change_only_the_kept_regions(tiny_llava, image_file, engine):
    from mmtok_cli.io import load_image

    out = image_file.with_name("numbered.png")
    question, methods = "What colour is the cat?", ("mmtok", "divprune")
    result = _run("show", image_file, question, "--model", tiny_llava, "--tokens", 6, "--methods", ",".join(methods),
                  "--max-new-tokens", 2, "--numbers", "--out", out)
    assert result.exit_code == 0, result.stderr
    picture = load_image(str(image_file))
    results = [(m, engine.ask(picture, question, method=m, tokens=6, max_new_tokens=2)) for m in methods]
    assert any(a.kept_order != a.kept_indices for _, a in results)
    plain = np.asarray(show.picture_for(engine, picture, question, results))
    with Image.open(out) as sheet:
        numbered = np.asarray(sheet.convert("RGB"))
    assert np.array_equal(numbered, np.asarray(show.picture_for(engine, picture, question, results, numbers=True)))
    # Where each column's panel sits: below the question (the sheet without it starts at GAP).
    regions = engine.adapter.token_regions(engine.prepare([picture], [question]), 0)
    top = show.GAP + plain.shape[0] - show.render(picture, regions, results, model=engine.model_name).height
    scale = show.PANEL_SIDE / max(picture.size)
    inside = np.zeros(plain.shape[:2], dtype=bool)
    changed = (numbered != plain).any(-1)
    for column, (_, answer) in enumerate(results):
        left = show.GAP + column * (show.PANEL_SIDE + show.GAP)
        for i in answer.kept_indices[0]:
            x0, y0, x1, y1 = (round(v * scale) for v in regions.boxes[i])
            if x1 > x0 and y1 > y0:
                inside[top + y0 : top + y1, left + x0 : left + x1] = True
                assert changed[top + y0 : top + y1, left + x0 : left + x1].any()  # 33-px cells: numbers fit
    assert changed.any() and not (changed & ~inside).any()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--methods", "mmtok,best"], "unknown method 'best' in --methods"),
        (["--methods", ","], "--methods is empty"),
        (["--out", "no-such-folder/kept.png"], "the folder of --out 'no-such-folder/kept.png' does not exist"),
        (["--out", "kept.txt"], "needs an image suffix"),
    ],
)
def test_show_rejects_bad_options_in_one_line_before_loading(image_file, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = _run("show", image_file, "What?", "--model", "no/such-model", "--out", "kept.png", *args)
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "loading" not in result.stderr


def test_ask_show_saves_the_picture(tiny_llava, engine, tmp_path):
    image_file = tmp_path / "plain.png"
    Image.new("RGB", (112, 112), COLOUR).save(image_file)
    out = tmp_path / "ask.png"
    result = _run("ask", image_file, "What is here?", "--model", tiny_llava, "-k", 4, "--max-new-tokens", 3,
                  "--show", out)
    assert result.exit_code == 0, result.stderr
    kept = engine.ask(Image.open(image_file).convert("RGB"), "What is here?", tokens=4, max_new_tokens=3)
    kept = kept.kept_indices[0]
    assert len(kept) == 4 and kept != [0, 1, 2, 3]  # not what a drawing of the first k tokens would show
    with Image.open(out) as picture:
        assert picture.width == show.PANEL_SIDE + 2 * show.GAP
        _assert_kept_bright_and_dropped_dimmed(picture, kept)
    missing = _run("ask", image_file, "What is here?", "--model", tiny_llava, "--show", tmp_path / "no" / "a.png")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_batch_show_dir_writes_one_picture_per_answered_item(tiny_llava, engine, tmp_path):
    import json

    colours = [COLOUR, (110, 60, 200), (150, 200, 90)]  # colours whose dimmed shade _dimmed gets exactly
    for i, colour in enumerate(colours):
        Image.new("RGB", (112, 112), colour).save(tmp_path / f"img{i}.png")
    lines = [{"id": "a/1", "image": "img0.png", "question": "what is this ?"},
             {"id": 2, "image": "img1.png", "question": "what is this ?", "tokens": 5},
             {"id": "gone", "image": "missing.png", "question": "what is this ?"},
             {"id": "c", "image": "img2.png", "question": "what is this ?", "tokens": 3}]
    source = tmp_path / "q.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    pictures = tmp_path / "pictures"
    result = _run("batch", source, "--model", tiny_llava, "--max-new-tokens", 3, "--batch-size", 2,
                  "--show-dir", pictures)
    assert result.exit_code == 1  # the missing image
    assert sorted(p.name for p in pictures.iterdir()) == sorted(show.picture_name(i) for i in ("a/1", 2, "c"))
    # each picture shows its own item's kept tokens (answered alone here)
    for item_id, image, colour, k in (("a/1", 0, COLOUR, 64), (2, 1, colours[1], 5), ("c", 2, colours[2], 3)):
        alone = engine.ask(Image.open(tmp_path / f"img{image}.png").convert("RGB"), "what is this ?", tokens=k,
                           max_new_tokens=3)
        kept = alone.kept_indices[0]
        assert len(kept) == k
        with Image.open(pictures / show.picture_name(item_id)) as picture:
            assert picture.width == show.PANEL_SIDE + 2 * show.GAP
            _assert_kept_bright_and_dropped_dimmed(picture, kept, colour)
    assert _run("batch", source, "--show-dir", source).exit_code == 2  # a file, not a folder
