"""Pictures of what the model was given: kept tokens' regions bright and outlined, dropped ones dimmed.

The regions come from the adapter (`token_regions`, exact for each family's preprocessing); this
module only draws, with PIL. One column per method, side by side on one sheet, each with a caption
(method, kept/total tokens, model, answer). LLaVA-NeXT columns have two panels: its coarse base view
of the whole image and its high-resolution crops, each drawn on the original image. Optionally each
kept region carries its pick rank (`Answer.kept_order`; 1 = picked first), where the number fits.

An item of several inputs draws its images side by side, and a video as a contact sheet of its sampled
frames, one tile per temporal grid (its first frame) with that grid's kept tokens bright (`render_inputs`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from . import options
from .errors import MmtokError, UsageError

if TYPE_CHECKING:  # `mmtok_cli.models` imports the ML stack; the CLI checks paths and methods before that
    from .engine import Answer, Engine
    from .models.base import Prepared
    from .models.regions import TokenRegions

PANEL_SIDE = 384
"""Longest side of each drawn image, in pixels (images are scaled up or down to it)."""
MIN_COLUMN = 260
"""Narrowest column, so captions stay readable next to tall, narrow images."""
GAP = 8
DIM = 0.72
"""How far dropped regions are blended toward DARK."""
DARK = (20, 20, 24)
OUTLINE = (255, 196, 0)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)
FONT_SIZE = 14
NUMBER_SIZE = 10
"""Font size of the pick ranks; a rank wider or taller than its region is left out."""
NUMBER_HALO = (255, 255, 255)
"""Light outline around the dark rank digits, so they read on bright and dimmed regions alike."""
CAPTION_LINES = 6
"""Most lines of answer text per caption; longer answers end with an ellipsis."""
INPUT_SIDE = 256
"""Longest side of each image of an item of several inputs."""
FRAME_SIDE = 160
"""Longest side of each frame of a video's contact sheet."""
FRAMES_PER_LINE = 4


def parse_methods(text: str) -> list[str]:
    """`--methods mmtok,full` -> ["mmtok", "full"]; any method the engine knows, each once (one column each)."""
    methods = options.parse_methods(text)
    if len(set(methods)) != len(methods):
        raise UsageError(f"--methods names a method twice: {text}")
    return methods


def check_picture_path(path: str | Path, option: str, inputs: Iterable[str | Path] = ()) -> Path:
    """Reject an output picture path before the model loads (io.check_output), with an image format's suffix."""
    from .io import check_output

    target = check_output(path, option, inputs=inputs)
    if target.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"{option} '{path}' needs an image suffix such as .png or .jpg")
    return target


def prepare_picture_dir(path: str | Path, option: str = "--show-dir") -> Path:
    """The folder pictures go to, created if only it is missing, after trying that files can be made there."""
    from .io import check_output_folder

    folder = check_output_folder(path, option)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} '{path}' cannot be created ({exc.strerror or exc})") from None
    return folder


def picture_name(item_id: Any) -> str:
    """A safe file name for an item id; ids that had to change get a short hash, so two never collide."""
    text = str(item_id)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80]
    if safe != text:
        safe = f"{safe or 'item'}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return f"{safe}.png"


def save_picture(picture: Image.Image, path: str | Path) -> None:
    from .io import writing

    try:
        with writing(path, "the picture"):
            picture.convert("RGB").save(path)
    except ValueError as exc:
        raise MmtokError(f"cannot write the picture '{path}': {exc}") from None


def render(
    image: Image.Image,
    regions: TokenRegions,
    results: Sequence[tuple[str, Answer]],
    *,
    model: str,
    question: str | None = None,
    numbers: bool = False,
) -> Image.Image:
    """The sheet: a column per (method, answer) over `image`, kept regions bright, dropped ones dimmed;
    `numbers`: each kept region also shows its pick rank (1 = picked first) where it fits."""
    if not results:
        raise ValueError("need at least one result to draw")
    image = image.convert("RGB")
    scale = PANEL_SIDE / max(image.size)
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
    font = _font(FONT_SIZE)
    return _sheet([_column(shown, scale, regions, method, answer, model, font, numbers) for method, answer in results],
                  question, font)


def render_inputs(
    visuals: Sequence[Any],
    regions: Sequence[TokenRegions],
    results: Sequence[tuple[str, Answer]],
    *,
    model: str,
    question: str | None = None,
    numbers: bool = False,
) -> Image.Image:
    """The sheet for an item of several inputs (images and videos, `regions` one per input): a column per (method,
    answer), each drawing the images side by side and each video as a contact sheet of its frames."""
    from .video import is_video

    if not results:
        raise ValueError("need at least one result to draw")
    for method, answer in results:
        totals = [entry["total"] for entry in answer.vision_inputs]
        if totals != [len(r.boxes) for r in regions]:
            raise MmtokError(f"cannot draw the inputs' tokens: the model saw {totals} tokens per input, the pictures "
                             f"hold {[len(r.boxes) for r in regions]} (a family that prepares an image of several "
                             "differently than one alone)")
    font = _font(FONT_SIZE)
    return _sheet([_inputs_column(visuals, regions, method, answer, model, font, numbers, is_video)
                   for method, answer in results], question, font)


def picture_for(
    engine: Engine,
    image: Any,
    question: str,
    results: Sequence[tuple[str, Answer]],
    *,
    prepared: Prepared | None = None,
    row: int = 0,
    numbers: bool = False,
) -> Image.Image:
    """`render` (one image) or `render_inputs` (several inputs, videos) for answers from `engine`; `prepared` (and
    `row` in it) if the caller has them, else made here."""
    from .models.base import as_visuals
    from .video import is_video

    if prepared is None:
        prepared = engine.prepare([image], [question])
    visuals = as_visuals(image)
    regions = engine.adapter.input_regions(prepared, row)
    if len(visuals) == 1 and not is_video(visuals[0]):
        return render(visuals[0], regions[0], results, model=engine.model_name, question=question, numbers=numbers)
    return render_inputs(visuals, regions, results, model=engine.model_name, question=question, numbers=numbers)


def show(
    engine: Engine, image: Any, question: str, methods: Sequence[str], *, numbers: bool = False,
    **options: Any,
) -> tuple[Image.Image, list[tuple[str, Answer]]]:
    """Answer `question` about `image` (an image, a video, or a list of them) once per method (`options` go to
    `Engine.run_prepared`) and draw them side by side (`numbers`: with pick ranks, see `render`)."""
    prepared = engine.prepare([image], [question])
    results = [(m, engine.run_prepared(prepared, [question], method=m, **options)[0]) for m in methods]
    return picture_for(engine, image, question, results, prepared=prepared, numbers=numbers), results


def save_batch_pictures(
    engine: Engine,
    folder: Path,
    prepared: Prepared,
    items: Sequence[tuple[Any, Any, str]],
    answers: Sequence[Answer],
    method: str,
) -> None:
    """One picture per answered batch item, `items` being (id, what it asks about, question) in `prepared`'s row
    order."""
    for row, ((item_id, image, question), answer) in enumerate(zip(items, answers)):
        picture = picture_for(engine, image, question, [(method, answer)], prepared=prepared, row=row)
        save_picture(picture, folder / picture_name(item_id))


# -- drawing ---------------------------------------------------------------------------------------


def _sheet(columns: list[Image.Image], question: str | None, font: Any) -> Image.Image:
    """The columns side by side under the question."""
    width = sum(c.width for c in columns) + GAP * (len(columns) + 1)
    header = _wrap(f"Q: {question}", font, width - 2 * GAP) if question else []
    top = GAP + _lines_height(header, font)
    sheet = Image.new("RGB", (width, top + max(c.height for c in columns) + GAP), BACKGROUND)
    _text(ImageDraw.Draw(sheet), (GAP, GAP), header, font, TEXT)
    x = GAP
    for column in columns:
        sheet.paste(column, (x, top))
        x += column.width + GAP
    return sheet


def _caption(method: str, answer: Answer, model: str, font: Any, small: Any, width: int) -> tuple[list[str], ...]:
    """A column's caption: the method and its kept tokens, the model (small), the answer cut at CAPTION_LINES."""
    caption = [f"{method} · {answer.vision_kept}/{answer.vision_total} vision tokens kept"]
    answer_text = " ".join(answer.answer.split()) or "(empty answer)"
    lines = _wrap(f"A: {answer_text}", font, width)
    if len(lines) > CAPTION_LINES:
        lines = lines[: CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1].rstrip() + " …"]
    return caption, _wrap(model, small, width)[:1], lines


def _caption_height(caption: tuple[list[str], ...], font: Any, small: Any) -> int:
    head, model, lines = caption
    return _lines_height(head, font) + _lines_height(model, small) + _lines_height(lines, font)


def _draw_caption(draw: ImageDraw.ImageDraw, y: int, caption: tuple[list[str], ...], font: Any, small: Any) -> None:
    head, model, lines = caption
    y = _text(draw, (0, y), head, font, TEXT)
    y = _text(draw, (0, y), model, small, MUTED)
    _text(draw, (0, y), lines, font, TEXT)


def _inputs_column(
    visuals: Sequence[Any], regions: Sequence[TokenRegions], method: str, answer: Answer, model: str, font: Any,
    numbers: bool, is_video: Any,
) -> Image.Image:
    """One method's column for an item of several inputs: consecutive images side by side on a line, each video a
    contact sheet of its own lines, each under a label with its kept/total tokens; then the caption."""
    small = _font(FONT_SIZE - 2)
    label_h = _lines_height(["x"], small)
    order = {token: rank for rank, token in enumerate(answer.kept_order[0], start=1)} if numbers else {}
    lines: list[list[Image.Image]] = []  # each line's blocks, left to right
    offset, last = 0, ""
    for number, (visual, reg, kept_idx) in enumerate(zip(visuals, regions, answer.kept_indices), start=1):
        n = len(reg.boxes)
        kept = set(kept_idx)
        ranks = {j: order[offset + j] for j in range(n) if offset + j in order}
        if is_video(visual):
            block = _contact_sheet(visual, reg, kept, ranks, small, label_h,
                                   f"video {number}: {len(kept)}/{n} tokens kept, {len(visual.indices)} frames")
            lines.append([block])
            last = "video"
        else:
            block = _image_block(visual, reg, kept, ranks, small, label_h, f"image {number}: {len(kept)}/{n} kept")
            if last == "image":
                lines[-1].append(block)
            else:
                lines.append([block])
            last = "image"
        offset += n
    width = max([MIN_COLUMN] + [sum(b.width for b in line) + GAP * (len(line) - 1) for line in lines])
    caption = _caption(method, answer, model, font, small, width)
    height = sum(max(b.height for b in line) + GAP for line in lines) + _caption_height(caption, font, small)
    column = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(column)
    y = 0
    for line in lines:
        x = 0
        for block in line:
            column.paste(block, (x, y))
            x += block.width + GAP
        y += max(b.height for b in line) + GAP
    _draw_caption(draw, y, caption, font, small)
    return column


def _scaled(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    image = image.convert("RGB")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BICUBIC), scale


def _labelled(label: str, pieces: list[Image.Image], font: Any, label_h: int, per_line: int,
              names: Sequence[str] = ()) -> Image.Image:
    """`pieces` under `label`, `per_line` to a line, each under its name where `names` gives one."""
    name_h = label_h if names else 0
    cell_w = max(p.width for p in pieces)
    cell_h = max(p.height for p in pieces) + name_h
    rows = -(-len(pieces) // per_line)
    cols = min(per_line, len(pieces))
    width = max(cols * cell_w + GAP * (cols - 1), int(font.getlength(label)) + 2)
    block = Image.new("RGB", (width, label_h + rows * cell_h + GAP * (rows - 1)), BACKGROUND)
    draw = ImageDraw.Draw(block)
    _text(draw, (0, 0), [label], font, MUTED)
    for i, piece in enumerate(pieces):
        x, y = (i % per_line) * (cell_w + GAP), label_h + (i // per_line) * (cell_h + GAP)
        if names:
            _text(draw, (x, y), [names[i]], font, MUTED)
        block.paste(piece, (x, y + name_h))
    return block


def _image_block(image: Image.Image, regions: TokenRegions, kept: set[int], ranks: dict[int, int], font: Any,
                 label_h: int, label: str) -> Image.Image:
    shown, scale = _scaled(image, INPUT_SIDE)
    panels = [_panel(shown, scale, regions, [i for i, q in enumerate(regions.panel) if q == p], kept, ranks)
              for p in range(len(regions.panels))]
    return _labelled(label, panels, font, label_h, 1, regions.panels if len(regions.panels) > 1 else ())


def _contact_sheet(video: Any, regions: TokenRegions, kept: set[int], ranks: dict[int, int], font: Any,
                   label_h: int, label: str) -> Image.Image:
    """A video's temporal grids as tiles, FRAMES_PER_LINE to a line: each its first frame with its tokens drawn."""
    grids = len(regions.panels)
    step = len(video.indices) / grids
    tiles = []
    for g in range(grids):
        shown, scale = _scaled(Image.fromarray(video.frames[min(int(g * step), len(video.frames) - 1)]), FRAME_SIDE)
        tiles.append(_panel(shown, scale, regions, [i for i, q in enumerate(regions.panel) if q == g], kept, ranks))
    return _labelled(label, tiles, font, label_h, FRAMES_PER_LINE, regions.panels)


def _column(
    shown: Image.Image, scale: float, regions: TokenRegions, method: str, answer: Answer, model: str, font: Any,
    numbers: bool = False,
) -> Image.Image:
    kept = set(answer.kept_indices[0])
    ranks = {token: rank for rank, token in enumerate(answer.kept_order[0], start=1)} if numbers else {}
    width = max(shown.width, MIN_COLUMN)
    small = _font(FONT_SIZE - 2)
    label_h = _lines_height(["x"], small) if len(regions.panels) > 1 else 0
    panels = []
    for p, name in enumerate(regions.panels):
        tokens = [i for i, panel in enumerate(regions.panel) if panel == p]
        in_panel = [i for i in tokens if i in kept]
        label = f"{name}: {len(in_panel)}/{len(tokens)} tokens kept" if label_h else ""
        panels.append((label, _panel(shown, scale, regions, tokens, kept, ranks)))
    caption = _caption(method, answer, model, font, small, width)
    height = sum(label_h + panel.height + GAP for _, panel in panels) + _caption_height(caption, font, small)
    column = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(column)
    y = 0
    for label, panel in panels:
        if label:
            _text(draw, (0, y), [label], small, MUTED)
            y += label_h
        column.paste(panel, ((width - panel.width) // 2, y))
        y += panel.height + GAP
    _draw_caption(draw, y, caption, font, small)
    return column


def _panel(
    shown: Image.Image, scale: float, regions: TokenRegions, tokens: list[int], kept: set[int],
    ranks: dict[int, int] | None = None,
) -> Image.Image:
    """`shown` dimmed, with the kept tokens' regions (of `tokens`) bright and outlined, and their `ranks`
    (token -> number) centred in them where the number fits."""
    from .models.regions import area  # the model is loaded by now; importing at the top would load it early

    dim = Image.blend(shown, Image.new("RGB", shown.size, DARK), DIM)
    mask = Image.new("L", shown.size, 0)
    fill = ImageDraw.Draw(mask)
    rects = []
    for i in tokens:
        box = regions.boxes[i]
        if i not in kept or area(box) <= 0:
            continue
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        if x1 > x0 and y1 > y0:
            rects.append((i, (x0, y0, x1 - 1, y1 - 1)))  # PIL rectangles include their last pixel
            fill.rectangle(rects[-1][1], fill=255)
    panel = Image.composite(shown, dim, mask)
    draw = ImageDraw.Draw(panel)
    for _, rect in rects:
        draw.rectangle(rect, outline=OUTLINE, width=1)
    if ranks:
        number_font = _font(NUMBER_SIZE)
        for i, rect in rects:
            _number(draw, rect, str(ranks[i]), number_font)
    return panel


def _number(draw: ImageDraw.ImageDraw, rect: tuple[int, int, int, int], text: str, font: Any) -> None:
    """`text` centred in `rect` (inclusive corners), dark with a light halo; left out if it does not fit."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    if x1 - x0 > rect[2] - rect[0] + 1 or y1 - y0 > rect[3] - rect[1] + 1:
        return
    at = (round((rect[0] + rect[2] + 1 - x0 - x1) / 2), round((rect[1] + rect[3] + 1 - y0 - y1) / 2))
    draw.text(at, text, font=font, fill=TEXT, stroke_width=1, stroke_fill=NUMBER_HALO)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _line_height(font: Any) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom - min(top, 0)) + 4


def _lines_height(lines: list[str], font: Any) -> int:
    return len(lines) * _line_height(font)


def _text(draw: ImageDraw.ImageDraw, at: tuple[int, int], lines: list[str], font: Any, color: tuple) -> int:
    """Draw `lines` from `at` down; returns the y below them."""
    x, y = at
    for line in lines:
        draw.text((x, y), line, font=font, fill=color)
        y += _line_height(font)
    return y


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word wider than a line is broken by characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width and len(word) > 1:
            cut = 1
            while cut < len(word) - 1 and font.getlength(word[: cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines
