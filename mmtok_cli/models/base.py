"""What every model-family adapter provides, and the pieces they share.

An adapter knows one family's layout: how to build its prompt and processor inputs, how to get
V (projected vision tokens), U (pre-projector features) and the allowed mask, and how to hand a
shortened sequence to `model.generate`. Selection, batching, timing and I/O live elsewhere.
"""

from __future__ import annotations

import copy
import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

import torch
from torch.nn.utils.rnn import pad_sequence
from typing_extensions import Self

from ..baselines import ZipInputs, choose
from ..cache import visual_key
from ..errors import MmtokError
from ..options import check_conventions
from ..selection import Selection
from ..text import content_token_ids
from ..video import is_video
from .processors import TORCHVISION_HINT, load_processor
from .regions import TokenRegions
from .views import previous_frame, select_global, select_per_view

VISIONZIP_FAMILIES = "llava, llava-next"
"""The families whose adapters provide `visionzip_inputs` (for the error of the others)."""


def padded(pad: float | bool = 0, **kwargs: Any) -> Any:
    """A `VisionTokens` field of (B, n, ...) tensors padded along n with `pad` (see `VisionTokens.split`)."""
    return field(metadata={"batch": "padded", "pad": pad}, **kwargs)


def per_image(**kwargs: Any) -> Any:
    """A `VisionTokens` field that is a list with one entry per image."""
    return field(default=None, metadata={"batch": "per-image"}, **kwargs)


def per_layer(**kwargs: Any) -> Any:
    """A `VisionTokens` field that is a list of layers, each a list with one entry per image."""
    return field(default=None, metadata={"batch": "per-layer"}, **kwargs)


def per_view(**kwargs: Any) -> Any:
    """A `VisionTokens` field of (views of the whole batch, ...) tensors; the `views` field says how many are each
    image's."""
    return field(default=None, metadata={"batch": "per-view"}, **kwargs)


Tokens = TypeVar("Tokens", bound="VisionTokens")


@dataclass
class VisionTokens:
    """A batch's vision tokens, padded to the longest image.

    Every field says how it is laid out over the batch (`padded`, `per_image`, `per_layer`, `per_view`), so a
    batch splits into one entry per image and joins back from any entries (`split`, `join`): the cache.
    """

    vision: torch.Tensor = padded(0)
    """(B, n, d) V: exactly what the LLM would receive for each image."""
    features: torch.Tensor = padded(0)
    """(B, n, e) U: vision-encoder features aligned one-to-one with `vision`."""
    mask: torch.Tensor = padded(False)
    """(B, n) bool: True where a token exists (False = batch padding)."""
    allowed: torch.Tensor = padded(False)
    """(B, n) bool: True where a token may be kept when pruning."""
    parts: torch.Tensor | None = padded(-1, default=None)
    """(B, n) long: which view of its item each token comes from (0, 1, ...; -1 for batch padding), numbered over
    the item's visual inputs in prompt order: an image's views (crops, tiles), a video's temporal grids; None:
    every item is one view. See views.py."""
    inputs: torch.Tensor | None = padded(-1, default=None)
    """(B, n) long: which of its item's visual inputs (0, 1, ... in prompt order) each token comes from (-1 for
    batch padding); None: every item has one."""
    timed: torch.Tensor | None = padded(False, default=None)
    """(B, n) bool: True on a video's tokens, whose views are its temporal grids (`--budget global` keeps a token of
    each); None: no video in the batch."""

    @property
    def counts(self) -> list[int]:
        return self.mask.sum(-1).tolist()

    def split(self) -> list[Self]:
        """Each image's tokens alone, as a batch of one without padding, in tensors of their own (no views of this
        batch's, which would keep it all alive)."""
        views = getattr(self, "views", None)
        starts = [0] if views is None else [0, *torch.tensor(views).cumsum(0).tolist()]
        out = []
        for row, n in enumerate(self.counts):
            values: dict[str, Any] = {}
            for f in fields(self):
                value, kind = getattr(self, f.name), f.metadata.get("batch")
                if value is None:
                    values[f.name] = None
                elif kind == "padded":
                    values[f.name] = value[row : row + 1, :n].clone()
                elif kind == "per-image":
                    values[f.name] = [_own(value[row])]
                elif kind == "per-layer":
                    values[f.name] = [[_own(layer[row])] for layer in value]
                elif kind == "per-view":
                    values[f.name] = value[starts[row] : starts[row + 1]].clone()
                else:
                    raise TypeError(f"{type(self).__name__}.{f.name} does not say how it is laid out over the batch")
            out.append(replace(self, **values))
        return out

    @classmethod
    def join(cls, items: Sequence[Self]) -> Self:
        """One batch of `items` (entries of `split`, in any order and with repeats), padded as `encode` pads."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            got, kind = [getattr(item, f.name) for item in items], f.metadata.get("batch")
            if all(g is None for g in got):
                values[f.name] = None
            elif kind == "padded":
                # `parts`, `inputs`, `timed` are None for an item of one image where a batch had no other: view 0,
                # input 0, no video throughout
                like = next(g for g in got if g is not None)
                rows = [g[0] if g is not None else like.new_zeros(item.mask.shape[1]) for g, item in zip(got, items)]
                values[f.name] = pad_sequence(rows, batch_first=True, padding_value=f.metadata["pad"])
            elif kind == "per-image":
                values[f.name] = [entry for g in got for entry in g]
            elif kind == "per-layer":
                values[f.name] = [[entry for g in layer for entry in g] for layer in zip(*got)]
            elif kind == "per-view":
                values[f.name] = torch.cat(got)
            else:
                raise TypeError(f"{cls.__name__}.{f.name} does not say how it is laid out over the batch")
        return cls(**values)


def _own(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_own(v) for v in value]
    return value.clone() if isinstance(value, torch.Tensor) else value


@dataclass
class Piece:
    """One visual input's tokens (an image, or a video), as an adapter encodes it, before `lay_out` puts each
    item's inputs one after another in its row."""

    vision: torch.Tensor
    """(n, d) V."""
    features: torch.Tensor
    """(n, e) U."""
    allowed: torch.Tensor | None = None
    """(n,) bool; None: every token."""
    views: torch.Tensor | None = None
    """(n,) long: each token's view within this input (0, 1, ...); None: one view."""
    video: bool = False
    """A video: its views are its temporal grids."""


def lay_out(pieces: Sequence[Piece], per_row: Sequence[int]) -> dict[str, Any]:
    """`VisionTokens` fields (vision, features, mask, allowed, parts, inputs, timed) of a batch whose row r holds the
    next `per_row[r]` pieces, one after another in prompt order, padded over the batch.

    `parts` numbers the views over the whole row (an input's views after the previous input's); it is None where
    no row has more than one view, `inputs` where no row has more than one piece, `timed` where none is a video.
    """
    rows, start = [], 0
    for count in per_row:
        rows.append(list(pieces[start : start + count]))
        start += count
    if start != len(pieces):
        raise ValueError(f"{len(pieces)} visual inputs for rows of {sum(per_row)}")
    device = pieces[0].vision.device

    def cat(row: list[Piece], value: Any) -> torch.Tensor:
        return torch.cat([value(i, p) for i, p in enumerate(row)])

    views: list[torch.Tensor] = []
    for row in rows:
        offset, numbered = 0, []
        for piece in row:
            local = piece.views if piece.views is not None else torch.zeros(len(piece.vision), dtype=torch.long,
                                                                            device=device)
            numbered.append(local.to(device) + offset)
            offset += int(local.max()) + 1 if len(local) else 1
        views.append(torch.cat(numbered))
    vision = pad_sequence([cat(row, lambda i, p: p.vision) for row in rows], batch_first=True)
    lengths = torch.tensor([sum(len(p.vision) for p in row) for row in rows], device=device)
    mask = torch.arange(vision.shape[1], device=device) < lengths[:, None]
    allowed = pad_sequence([cat(row, lambda i, p: p.allowed.to(device) if p.allowed is not None else
                                torch.ones(len(p.vision), dtype=torch.bool, device=device)) for row in rows],
                           batch_first=True)
    several_views = any(int(v.max()) > 0 for v in views if len(v))
    several_inputs = max(per_row) > 1
    videos = any(p.video for p in pieces)
    return {
        "vision": vision,
        "features": pad_sequence([cat(row, lambda i, p: p.features) for row in rows], batch_first=True),
        "mask": mask,
        "allowed": allowed & mask,
        "parts": pad_sequence(views, batch_first=True, padding_value=-1) if several_views else None,
        "inputs": pad_sequence([cat(row, lambda i, p: torch.full((len(p.vision),), i, device=device)) for row in rows],
                               batch_first=True, padding_value=-1) if several_inputs else None,
        "timed": pad_sequence([cat(row, lambda i, p: torch.full((len(p.vision),), p.video, device=device))
                               for row in rows], batch_first=True) if videos else None,
    }


def view_pieces(vision: torch.Tensor, features: torch.Tensor, views: list[int]) -> list[Piece]:
    """Pieces of images made of equal views (tiles, pan-and-scan crops): `vision` / `features` are (all views of the
    batch, tokens per view, d / e), `views` how many of them each image has, in order."""
    per_view = vision.shape[1]
    return [Piece(vision=v.flatten(0, 1), features=u.flatten(0, 1),
                  views=torch.arange(len(v), device=v.device).repeat_interleave(per_view))
            for v, u in zip(vision.split(views), features.split(views))]


def input_counts(tokens: VisionTokens) -> list[list[int]]:
    """Per item, how many tokens each of its visual inputs has, in prompt order."""
    if tokens.inputs is None:
        return [[n] for n in tokens.counts]
    inputs = tokens.inputs.cpu()
    return [torch.bincount(row[row >= 0]).tolist() for row in inputs]


def kept_by_input(tokens: VisionTokens, kept: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Per item, each visual input's kept indices counted within that input (ascending where `kept` is)."""
    out = []
    for counts, idx in zip(input_counts(tokens), kept):
        starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
        out.append([idx[(idx >= lo) & (idx < hi)] - lo for lo, hi in itertools.pairwise(starts)])
    return out


def as_visuals(entry: Any) -> list[Any]:
    """An item's visual inputs in prompt order: `entry` is an image, a video, or a list of them."""
    return list(entry) if isinstance(entry, (list, tuple)) else [entry]


@dataclass(frozen=True)
class Released:
    """An image let go after preprocessing (`Prepared.drop_images`): its size, no pixels."""

    size: tuple[int, int]
    """(width, height), as PIL's `Image.size`."""


def _released(entry: Any) -> Any:
    if isinstance(entry, (list, tuple)):
        return [_released(v) for v in entry]
    if is_video(entry):
        return entry.released()
    return entry if isinstance(entry, Released) else Released(tuple(entry.size))


@dataclass
class Prepared:
    """Processor outputs for a batch, plus what the processor does not keep."""

    inputs: Any
    """The processor's BatchFeature (input_ids, attention_mask, pixel_values, ...) on the model's device."""
    image_sizes: list[tuple[int, int]]
    """(height, width) of each original image of the batch, before any resizing or padding: the rows' images in
    order, each row's in prompt order (one per row where every item is one image)."""
    images: list[Any] = field(default_factory=list)
    """What each row asks about, as given to `Engine.prepare`: an image, a video, or a list of them in prompt order
    (for what needs their pixels later: the agent's second model, pictures of the kept regions, a video's timing).
    After `drop_images`, stand-ins without pixels (`Released`, `Video.released`)."""
    keys: list[str] | None = None
    """Each row's cache key (`cache.visual_key`), set by `Engine.prepare`."""
    post_prompt: str | None = None
    """The instruction the prompts carry after each question (`Engine.prepare`); T leaves it out (text.py)."""
    seeds: list[int] | None = None
    """Each image's seed for `random` (`engine.image_seed`), set by `Engine.prepare(seeds=True)`; without it,
    `random` computes them from `images`."""

    released: bool = False
    """`drop_images` let the originals go."""

    def drop_images(self) -> None:
        """Let go of the originals' pixels: the processor's outputs, keys and seeds are all that answering needs.
        Each input keeps a stand-in with its kind and size (a video its frame indices and timing), which the rows'
        layout and the records read."""
        self.images = [_released(entry) for entry in self.images]
        self.released = True

    @property
    def pixels(self) -> bool:
        """Whether `images` are the originals, pixels and all."""
        return bool(self.images) and not self.released

    @property
    def rows(self) -> int:
        return len(self.images) if self.images else len(self.image_sizes)

    @property
    def visuals(self) -> list[list[Any]]:
        """Each row's visual inputs in prompt order."""
        return [as_visuals(entry) for entry in self.images]

    def count(self, kind: str) -> list[int]:
        """Per row, how many images (`kind` "image") or videos ("video") it holds; one image each without `images`."""
        if not self.images:
            return [int(kind == "image")] * len(self.image_sizes)
        return [sum((kind == "video") == is_video(v) for v in row) for row in self.visuals]

    def image_index(self, row: int) -> int:
        """The index (in `image_sizes`) of row `row`'s first image."""
        return sum(self.count("image")[:row])

    def layout(self) -> list[list[tuple[str, int]]]:
        """Per row, its visual inputs in prompt order as (kind, index among the batch's inputs of that kind): the
        order in which processors lay out `pixel_values` / `pixel_values_videos` and their grids."""
        seen = {"image": 0, "video": 0}
        out = []
        for row in self.visuals if self.images else [[None]] * len(self.image_sizes):
            entries = []
            for visual in row:
                kind = "video" if is_video(visual) else "image"
                entries.append((kind, seen[kind]))
                seen[kind] += 1
            out.append(entries)
        return out


class Adapter(ABC):
    """One model family. Subclasses set the class attributes and implement the abstract methods."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    """`config.model_type` values this adapter handles."""
    tau_t: ClassVar[float]
    example: ClassVar[str]
    """An example checkpoint id, for help texts."""
    budget: ClassVar[str]
    """What `--tokens K` means for this family, in a line (for `mmtok models`)."""
    fallback_prompt: ClassVar[str | None] = None
    """The family's conversation format, for checkpoints saved without a chat template."""
    videos: ClassVar[bool] = False
    """The family's transformers class takes videos, and the adapter feeds them (one view per temporal grid)."""
    nested_images: ClassVar[bool] = False
    """The processor wants each prompt's images as a list of their own (else one flat list for the batch)."""
    divprune_on: ClassVar[str] = "vision"
    """The features `divprune` runs on, as its authors' code does for the family: "vision" (V, the LLM's input
    tokens: DivPrune's own LLaVA code) or "features" (U)."""
    has_pan_and_scan: ClassVar[bool] = False
    """The family can crop long images into extra views (Gemma 3's pan-and-scan); only then may `Engine` set its
    `pan_and_scan`."""

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        # Batches are left-padded so every row's generated tokens start at the same column.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # some checkpoints ship none; padded rows are masked anyway
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def for_thread(self) -> Adapter:
        """A copy sharing the model but owning its processor, for preprocessing in another thread."""
        clone = copy.copy(self)
        clone.processor = copy.deepcopy(self.processor)
        clone.tokenizer = clone.processor.tokenizer
        return clone

    @staticmethod
    @abstractmethod
    def model_class() -> type:
        """The transformers class to load checkpoints of this family with."""

    @staticmethod
    def processor_class() -> type | None:
        """The family's processor class where it has a video processor (which needs torchvision): mmtok then
        assembles an image-only one where the full processor cannot load. None: the full one always loads."""
        return None

    @classmethod
    def load_processor(cls, source: str, **kwargs: Any) -> Any:
        """The checkpoint's processor (`kwargs` go to `from_pretrained`); see processors.py."""
        return load_processor(source, cls.processor_class(), **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_token(self) -> str:
        return self.processor.image_token

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def prompt(self, question: str, kinds: Sequence[str] = ("image",), *,
               conversation: list[dict] | None = None) -> str:
        """The chat-templated prompt: a user turn with the visual inputs (`kinds`: "image" / "video", in prompt
        order), then the question text.

        `conversation`: the whole chat instead (chat-template messages, each visual input as one `{"type": "image"}`
        or `{"type": "video"}` part, in the order of `kinds`; `question` its last user text), as `mmtok serve`
        receives it; it needs the checkpoint's chat template."""
        if not getattr(self.processor, "chat_template", None):
            if conversation is not None:
                raise MmtokError("the checkpoint has no chat template, so it reads only one user message: the image, "
                                 "then the question")
            if self.fallback_prompt is None:
                raise MmtokError("the checkpoint has no chat template; add chat_template.jinja to its folder")
            if tuple(kinds) != ("image",):
                raise MmtokError("the checkpoint has no chat template, and its built-in format holds one image; add "
                                 "chat_template.jinja to its folder to ask about several images or a video")
            return self.fallback_prompt.format(image=self.image_token, question=question)
        if conversation is None:
            parts: list[dict[str, Any]] = [{"type": kind} for kind in kinds]
            messages = [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        placed = [p["type"] for m in conversation if isinstance(m["content"], list) for p in m["content"]
                  if p["type"] in ("image", "video")]
        if placed != list(kinds):  # the processor matches the inputs to the placeholders in order
            raise ValueError(f"the conversation holds {placed} where the item's inputs are {list(kinds)}")
        from jinja2 import TemplateError

        try:
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except TemplateError as exc:  # e.g. a template that knows no system turn, or wants turns to alternate
            raise MmtokError(f"the checkpoint's chat template refuses these messages: {exc}") from None

    def prompts(self, questions: list[str], visuals: Sequence[Sequence[Any]],
                conversations: Sequence[list[dict] | None] | None = None) -> list[str]:
        """`prompt` for each question, with its row's visual inputs (and its conversation, where one is given)."""
        return [self.prompt(q, ["video" if is_video(v) else "image" for v in row], conversation=c)
                for q, row, c in zip(questions, visuals, conversations or [None] * len(questions), strict=True)]

    def check_visuals(self, visuals: Sequence[Sequence[Any]]) -> None:
        """A one-line MmtokError for inputs the family cannot take (`check_kinds`), or an item of none."""
        self.check_kinds({"video" if is_video(v) else "image" for row in visuals for v in row})
        if any(not row for row in visuals):
            raise MmtokError("an item needs at least one image or video")

    def check_kinds(self, kinds: Iterable[str]) -> None:
        """A one-line MmtokError where `kinds` ("image" / "video") hold a video the family cannot take: it has no
        video input, or its processor was assembled for images only (no torchvision)."""
        if "video" not in kinds:
            return
        if not self.videos:
            from .registry import ADAPTERS

            video_families = ", ".join(a.family for a in ADAPTERS if a.videos)
            # a family with a video processor (processor_class) has a transformers class that takes videos
            what = ("checkpoints take no videos" if self.processor_class() is None
                    else "videos are not fed by mmtok yet")
            raise MmtokError(f"{self.family} {what}; use a video family ({video_families}), or ask about frames saved "
                             "as images")
        if getattr(self.processor, "video_processor", None) is None:
            raise MmtokError(f"{self.family} reads videos, but its processor was loaded for images only: "
                             f"{TORCHVISION_HINT}")

    def processor_images(self, visuals: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """The processor's image and video arguments for the rows' visual inputs: images as one flat list (the
        processor matches them to the prompts' placeholders in order; or a list per row, `nested_images`), videos as
        their sampled frames with their timing (`video_metadata`; the frames are already sampled, so the processor
        samples none)."""
        images = [v for row in visuals for v in row if not is_video(v)]
        videos = [v for row in visuals for v in row if is_video(v)]
        kwargs: dict[str, Any] = {}
        if images:
            per_row = [[v for v in row if not is_video(v)] for row in visuals]
            kwargs["images"] = per_row if self.nested_images else images
        if videos:
            kwargs.update(videos=[v.frames for v in videos], video_metadata=[v.metadata() for v in videos],
                          do_sample_frames=False)
        return kwargs

    def preprocess(
        self, entries: Sequence[Any], questions: list[str], conversations: Sequence[list[dict] | None] | None = None
    ) -> Prepared:
        """Processor outputs for one question per entry (an image, a video, or a list of them; `conversations`: see
        `prompt`), on the model's device."""
        visuals = [as_visuals(e) for e in entries]
        self.check_visuals(visuals)
        prompts = self.prompts(questions, visuals, conversations)
        inputs = self.processor(text=prompts, padding=True, return_tensors="pt", **self.processor_images(visuals))
        return Prepared(inputs=inputs.to(self.device), image_sizes=image_sizes(visuals), images=list(entries))

    def frame_rule(self) -> Any:
        """The family's own choice of frames for a video when neither --frames nor --fps is given: a function of the
        file's `VideoInfo` returning frame indices (its video processor's `sample_frames`, where that processor
        samples by default), or None: every frame (up to --max-frames)."""
        vp = getattr(self.processor, "video_processor", None)
        if vp is None or not getattr(vp, "do_sample_frames", False):
            return None

        def rule(info: Any) -> list[int]:
            from transformers.video_utils import VideoMetadata

            meta = VideoMetadata(total_num_frames=info.total_frames, fps=info.fps, width=info.width,
                                 height=info.height, duration=info.duration)
            return [int(i) for i in vp.sample_frames(meta)]

        return rule

    @abstractmethod
    def encode(self, prepared: Prepared) -> VisionTokens:
        """Run the vision side once and return V, U and the masks."""

    def pan_and_scan_in_use(self) -> bool | None:
        """Whether long images are cropped into extra views now; None for a family without pan-and-scan."""
        return None

    def cache_salt(self) -> str:
        """Settings besides the image's pixels that change its vision tokens and can change between runs of one
        loaded model (part of the cache key); the processor's fixed settings need not be here."""
        return ""

    def image_keys(self, entries: Sequence[Any]) -> list[str]:
        """Each row's cache key: its images' pixels and videos' sampled frames, and this adapter's `cache_salt`."""
        salt = self.cache_salt()
        return [visual_key(entry, salt) for entry in entries]

    IMAGE_INPUTS: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes", "image_grid_thw")
    """Processor outputs with entries per image of the batch (`pixel_rows` entries each for `pixel_values`)."""
    VIDEO_INPUTS: ClassVar[tuple[str, ...]] = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    """Processor outputs with entries per video of the batch (`video_pixel_rows` entries each for the pixels)."""

    def pixel_rows(self, prepared: Prepared) -> list[int] | None:
        """How many rows of `pixel_values` each image has, for families whose processor concatenates the batch's
        views or patches; None: `pixel_values` has one entry per image, like every other input."""
        return None

    def video_pixel_rows(self, prepared: Prepared) -> list[int] | None:
        """As `pixel_rows`, for `pixel_values_videos` and each video."""
        return None

    def image_inputs(self, prepared: Prepared, rows: list[int]) -> Prepared:
        """The batch with only its rows `rows` (in that order), for `encode`: to encode only the items the cache
        lacks. Every input is cut per row, per image (`IMAGE_INPUTS`) or per video (`VIDEO_INPUTS`)."""
        from transformers import BatchFeature

        size = prepared.rows
        has = prepared.inputs.keys()
        units = {"image": (self.IMAGE_INPUTS, prepared.count("image"),
                           self.pixel_rows(prepared) if "pixel_values" in has else None, "pixel_values"),
                 "video": (self.VIDEO_INPUTS, prepared.count("video"),
                           self.video_pixel_rows(prepared) if "pixel_values_videos" in has else None,
                           "pixel_values_videos")}
        cut = {}
        for key, value in prepared.inputs.items():
            kind = next((k for k, (keys, *_) in units.items() if key in keys), None)
            if kind is not None:
                _, per_row, pixel_counts, pixels = units[kind]
                per_unit = pixel_counts if key == pixels and pixel_counts is not None else [1] * sum(per_row)
                cut[key] = _take_units(value, per_unit, per_row, rows)
            elif isinstance(value, torch.Tensor) and value.shape[:1] == (size,):
                cut[key] = value[torch.tensor(rows, device=value.device)]
            else:
                raise MmtokError(f"{self.family}: cannot tell which items the processor output '{key}' belongs to")
        sizes, firsts = prepared.count("image"), [prepared.image_index(r) for r in range(size)]
        return Prepared(
            inputs=BatchFeature(cut),
            image_sizes=[prepared.image_sizes[i] for r in rows for i in range(firsts[r], firsts[r] + sizes[r])],
            images=[prepared.images[r] for r in rows] if prepared.images else [],
            keys=[prepared.keys[r] for r in rows] if prepared.keys else None,
            seeds=[prepared.seeds[r] for r in rows] if prepared.seeds else None, released=prepared.released,
        )

    def text_tokens(
        self, questions: list[str], agent_answers: list[str] | None = None, *, words: str = "content",
        post_prompt: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T for each question, padded: (B, m, d) input-embedding rows and a (B, m) mask.

        `agent_answers`: one preliminary answer per question, whose words join the question's (the agent).
        `words`: which of the question's words ("content" or "all", see `text.question_words`, which says what
        happens to the `post_prompt` the model reads after each question).
        """
        check_conventions(question_words=words)
        answers = agent_answers or [None] * len(questions)
        ids = [
            content_token_ids(q, self.tokenizer, image_token=self.image_token, agent_answer=a, words=words,
                              post_prompt=post_prompt)
            for q, a in zip(questions, answers, strict=True)
        ]
        m = max((len(i) for i in ids), default=0)
        padded = torch.zeros(len(ids), m, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(ids), m, dtype=torch.bool, device=self.device)
        for row, row_ids in enumerate(ids):
            padded[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            mask[row, : len(row_ids)] = True
        return self.model.get_input_embeddings()(padded), mask

    def select(
        self, tokens: VisionTokens, text: torch.Tensor, text_mask: torch.Tensor, budgets: list[int],
        method: str = "mmtok", seeds: Sequence[int] | None = None, *, budget: str = "total",
        zip_inputs: ZipInputs | None = None, **params: float,
    ) -> Selection:
        """Kept token indices per item for per-item budgets: `.indices` ascending (what the model is fed),
        `.order` the same in pick order; `params` are alpha / tau_t / tau_v, `seeds` one per item for "random".

        One batched selection with `method` (MMTok or a baseline, see `baselines.choose`) over each
        item's tokens; for items of several views (`tokens.parts`: crops, tiles, several images, a video's temporal
        grids), `budget` says how (options.BUDGETS): "total" splits each item's budget evenly over its inputs and
        each input's share over its views, "per-view" gives every view the budget, "global" selects over all the
        views at once, after a token of each temporal grid of a video (see views.py). `zip_inputs`: what
        "visionzip" reads (`visionzip_inputs`).
        """
        check_conventions(budget=budget)
        seed = {} if seeds is None else {"seed": seeds}
        common = {"divprune_on": self.divprune_on, "zip_inputs": zip_inputs, **params}
        if method == "evs":  # top-k over all of an item's frames at once, as vLLM's EVS: --budget does not apply
            if tokens.timed is None or not bool(tokens.timed.any(1).all()):
                raise MmtokError("evs chooses among a video's frames; ask about a video (with a Qwen-VL family), or "
                                 "use another --method for images")
            previous = None if tokens.parts is None else previous_frame(tokens.parts, tokens.timed, tokens.inputs)
            return choose(method, tokens.vision, tokens.features, text, k=budgets, vision_mask=tokens.mask,
                          allowed=tokens.allowed, text_mask=text_mask, previous=previous, **params)
        if method == "visionzip" and tokens.inputs is not None:
            raise MmtokError("visionzip compresses one image per question; ask about several images or a video with "
                             "another --method")
        if tokens.parts is not None and budget != "global":
            return select_per_view(
                tokens.vision, tokens.features, tokens.parts, tokens.allowed, text, text_mask, budgets,
                mode=budget, method=method, seeds=seeds, inputs=tokens.inputs, **common,
            )
        if tokens.parts is not None and tokens.timed is not None and bool(tokens.timed.any()):
            return select_global(
                tokens.vision, tokens.features, tokens.mask, tokens.parts, tokens.timed, tokens.allowed, text,
                text_mask, budgets, method=method, seeds=seeds, divprune_on=self.divprune_on, **params,
            )
        if method == "visionzip" and tokens.parts is not None:
            raise MmtokError("visionzip selects within each view (its CLS attention is per view); use --budget "
                             "total or per-view")
        return choose(
            method, tokens.vision, tokens.features, text, k=budgets, vision_mask=tokens.mask, allowed=tokens.allowed,
            text_mask=text_mask, **common, **seed,
        )

    def visionzip_inputs(self, prepared: Prepared, tokens: VisionTokens) -> ZipInputs:
        """What `visionzip` reads besides V and U: each token's CLS attention and attention keys in the vision
        layer the model reads, its view's CLS features and the projector (see `baselines.ZipInputs`)."""
        raise MmtokError(f"visionzip needs a vision tower with a CLS token; it works on {VISIONZIP_FAMILIES}, "
                         f"not {self.family}")

    @abstractmethod
    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        """Keyword arguments for `model.generate` that feed each image's kept tokens (all if None)."""

    def input_regions(self, prepared: Prepared, row: int) -> list[TokenRegions]:
        """Row `row`'s visual inputs' tokens as boxes of their pictures, one `TokenRegions` per input in prompt order
        (each numbered within its input, like `Answer.kept_indices`): an image's over the image (prepared alone,
        as the processor prepares it), a video's over its frames, a panel per temporal grid (`video_regions`)."""
        if not prepared.images or all(len(r) == 1 and not is_video(r[0]) for r in prepared.visuals):
            return [self.token_regions(prepared, row)]  # a batch of one image per row: row r is image r
        out, videos = [], sum(prepared.count("video")[:row])
        for visual in prepared.visuals[row]:
            if is_video(visual):
                out.append(self.video_regions(prepared, videos))
                videos += 1
            else:
                out.append(self.token_regions(self.preprocess([visual], [""]), 0))
        return out

    def video_regions(self, prepared: Prepared, index: int) -> TokenRegions:
        """The batch's video `index` as boxes of its frames, a panel per temporal grid (families with videos)."""
        raise MmtokError(f"{self.family} models cannot show which regions of a video their tokens cover")

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Image `row`'s vision tokens as boxes of its original image, numbered like `kept_indices`."""
        raise MmtokError(f"{self.family} models cannot show which image regions their tokens cover yet")


def image_sizes(visuals: Sequence[Sequence[Any]]) -> list[tuple[int, int]]:
    """`Prepared.image_sizes`: (height, width) of every image of the rows, in order."""
    return [(v.height, v.width) for row in visuals for v in row if not is_video(v)]


def _take_units(value: Any, per_unit: list[int], per_row: list[int], rows: list[int]) -> Any:
    """Of a processor output that holds `per_unit[u]` entries for each image (or video) u, the entries of `rows`'
    images, where row r holds the next `per_row[r]` units."""
    unit_starts = [0, *torch.tensor(per_unit, dtype=torch.long).cumsum(0).tolist()]
    row_starts = [0, *torch.tensor(per_row, dtype=torch.long).cumsum(0).tolist()]
    pieces = [value[unit_starts[row_starts[r]] : unit_starts[row_starts[r + 1]]] for r in rows]
    return torch.cat(pieces) if isinstance(value, torch.Tensor) else [v for piece in pieces for v in piece]


def merged_feed(tokens: VisionTokens, selection: Selection) -> tuple[VisionTokens, list[torch.Tensor]]:
    """The tokens and kept indices to hand to `generation_inputs`, for selections that carry new rows.

    Where an image's selection has `rows` (features made by merging, e.g. `visionzip`'s contextual tokens),
    they are written into the first slots of a copy of V and the kept indices become those slots, so any
    adapter that feeds `tokens.vision[row, kept]` in order feeds exactly those rows. Families that place
    vision tokens by their index (M-RoPE) must not take such selections.
    """
    if selection.rows is None or all(r is None for r in selection.rows):
        return tokens, selection.indices
    vision = tokens.vision.clone()
    kept = []
    for row, (idx, rows) in enumerate(zip(selection.indices, selection.rows)):
        if rows is None:
            kept.append(idx)
            continue
        vision[row, : len(rows)] = rows.to(vision.dtype)
        kept.append(torch.arange(len(rows), device=idx.device))
    return replace(tokens, vision=vision), kept


def placeholder_stays(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_id: int | Sequence[int], kept: list[torch.Tensor],
    counts: list[int],
) -> torch.Tensor:
    """(B, L) bool: the positions that stay when each row keeps the `kept[row]` of its `counts[row]` placeholders.

    Placeholders (`token_id`, or any of several ids: Qwen's image and video ones) are numbered in sequence order
    across all of a row's runs (one run per view, image or video), so the kept ones stay in place: what `compact`
    needs where the dropped ones are not simply the last.
    """
    chosen = torch.zeros(len(counts), max(max(counts), 1), dtype=torch.bool, device=input_ids.device)
    for row, idx in enumerate(kept):
        chosen[row, idx.to(input_ids.device)] = True
    ids = [token_id] if isinstance(token_id, int) else list(token_id)
    is_placeholder = torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
    rank = (is_placeholder.long().cumsum(1) - 1).clamp(min=0, max=chosen.shape[1] - 1)
    return attention_mask.bool() & (~is_placeholder | chosen.gather(1, rank))


def placeholder_runs(input_ids: torch.Tensor, token_id: int) -> list[list[int]]:
    """Per row, the lengths of its runs of consecutive `token_id` placeholders, in sequence order (families that wrap
    each image's placeholders, e.g. InternVL's `<img>...</img>`, have one run per image)."""
    is_placeholder = (input_ids == token_id).cpu()
    runs = []
    for row in is_placeholder:
        zero = torch.zeros(1, dtype=torch.int8)
        edges = torch.diff(torch.cat([zero, row.to(torch.int8), zero]))
        starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
        runs.append((ends - starts).tolist())
    return runs


def compact(stays: torch.Tensor, *seqs: torch.Tensor, pad: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Keep the (B, L) `stays` positions of each row, left-padded to the longest row.

    Every tensor in `seqs` has the sequence as its last two dims (B, L) (leading dims, e.g. the
    three M-RoPE axes, are carried along). Returns the new attention mask and the compacted tensors,
    with `pad` in the padding.
    """
    lengths = stays.sum(1)
    width = int(lengths.max())
    dest = (width - lengths)[:, None] + stays.long().cumsum(1) - 1
    rows = torch.arange(stays.shape[0], device=stays.device)[:, None].expand_as(stays)
    new_mask = torch.zeros(stays.shape[0], width, dtype=torch.long, device=stays.device)
    new_mask[rows[stays], dest[stays]] = 1
    out = []
    for seq in seqs:
        new = torch.full((*seq.shape[:-2], stays.shape[0], width), pad, dtype=seq.dtype, device=seq.device)
        new[..., rows[stays], dest[stays]] = seq[..., stays]
        out.append(new)
    return new_mask, out
