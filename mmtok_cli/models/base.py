"""What every model-family adapter provides, and the pieces they share.

An adapter knows one family's layout: how to build its prompt and processor inputs, how to get
V (projected vision tokens), U (pre-projector features) and the allowed mask, and how to hand a
shortened sequence to `model.generate`. Selection, batching, timing and I/O live elsewhere.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence

from ..baselines import ZipInputs, choose
from ..cache import image_key
from ..errors import MmtokError
from ..options import check_conventions
from ..selection import Selection
from ..text import content_token_ids
from .processors import load_processor
from .regions import TokenRegions
from .views import select_per_view

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
    """(B, n) long: which view of its image each token comes from (0, 1, ...; -1 for batch padding), for
    families whose images are several views (crops, tiles); None: one view. See views.py."""

    @property
    def counts(self) -> list[int]:
        return self.mask.sum(-1).tolist()

    def split(self: Tokens) -> list[Tokens]:
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
    def join(cls: type[Tokens], items: Sequence[Tokens]) -> Tokens:
        """One batch of `items` (entries of `split`, in any order and with repeats), padded as `encode` pads."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            got, kind = [getattr(item, f.name) for item in items], f.metadata.get("batch")
            if all(g is None for g in got):
                values[f.name] = None
            elif kind == "padded":
                # `parts` is None for an image of one view where a batch had no other: view 0 throughout
                rows = [g[0] if g is not None else item.mask.new_zeros(item.mask.shape[1], dtype=torch.long)
                        for g, item in zip(got, items)]
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
    return value.clone() if isinstance(value, torch.Tensor) else value


@dataclass
class Prepared:
    """Processor outputs for a batch, plus what the processor does not keep."""

    inputs: Any
    """The processor's BatchFeature (input_ids, attention_mask, pixel_values, ...) on the model's device."""
    image_sizes: list[tuple[int, int]]
    """(height, width) of each original image, before any resizing or padding."""
    images: list[Image.Image] = field(default_factory=list)
    """The original images, for what needs their pixels later (the agent's second model, pictures of the kept
    regions); empty once they are dropped (`drop_images`), which keeps a batch waiting in memory small."""
    keys: list[str] | None = None
    """Each image's cache key (`cache.image_key`), set by `Engine.prepare`."""
    post_prompt: str | None = None
    """The instruction the prompts carry after each question (`Engine.prepare`); T leaves it out (text.py)."""
    seeds: list[int] | None = None
    """Each image's seed for `random` (`engine.image_seed`), set by `Engine.prepare(seeds=True)`; without it,
    `random` computes them from `images`."""

    def drop_images(self) -> None:
        """Let go of the originals: the processor's outputs, keys and seeds are all that answering needs."""
        self.images = []


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

    def prompt(self, question: str, conversation: list[dict] | None = None) -> str:
        """The chat-templated prompt: a user turn with the image, then the question text.

        `conversation`: the whole chat instead (chat-template messages, the image as one `{"type": "image"}` part,
        `question` its last user text), as `mmtok serve` receives it; it needs the checkpoint's chat template."""
        if not getattr(self.processor, "chat_template", None):
            if conversation is not None:
                raise MmtokError("the checkpoint has no chat template, so it reads only one user message: the image, "
                                 "then the question")
            if self.fallback_prompt is None:
                raise MmtokError("the checkpoint has no chat template; add chat_template.jinja to its folder")
            return self.fallback_prompt.format(image=self.image_token, question=question)
        if conversation is None:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        from jinja2 import TemplateError

        try:
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except TemplateError as exc:  # e.g. a template that knows no system turn, or wants turns to alternate
            raise MmtokError(f"the checkpoint's chat template refuses these messages: {exc}") from None

    def prompts(self, questions: list[str], conversations: Sequence[list[dict] | None] | None = None) -> list[str]:
        """`prompt` for each question (and its conversation, where one is given)."""
        return [self.prompt(q, c) for q, c in zip(questions, conversations or [None] * len(questions), strict=True)]

    def preprocess(
        self, images: list[Image.Image], questions: list[str], conversations: Sequence[list[dict] | None] | None = None
    ) -> Prepared:
        """Processor outputs for one image per question (`conversations`: see `prompt`), on the model's device."""
        prompts = self.prompts(questions, conversations)
        inputs = self.processor(images=images, text=prompts, padding=True, return_tensors="pt")
        return Prepared(inputs=inputs.to(self.device), image_sizes=[(im.height, im.width) for im in images],
                        images=list(images))

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

    def image_keys(self, images: Sequence[Image.Image]) -> list[str]:
        """Each image's cache key: its pixels and this adapter's `cache_salt`."""
        salt = self.cache_salt()
        return [image_key(im, salt) for im in images]

    def pixel_rows(self, prepared: Prepared) -> list[int] | None:
        """How many rows of `pixel_values` each image has, for families whose processor concatenates the batch's
        views or patches; None: `pixel_values` has one entry per image, like every other input."""
        return None

    def image_inputs(self, prepared: Prepared, rows: list[int]) -> Prepared:
        """The batch with only its images `rows` (in that order), for `encode`: to encode only the images the
        cache lacks. Every input is cut per image (`pixel_rows` says how `pixel_values` is)."""
        from transformers import BatchFeature

        size = len(prepared.image_sizes)
        counts = self.pixel_rows(prepared)
        cut = {}
        for key, value in prepared.inputs.items():
            if key == "pixel_values" and counts is not None:
                starts = [0, *torch.tensor(counts).cumsum(0).tolist()]
                cut[key] = torch.cat([value[starts[r] : starts[r + 1]] for r in rows])
            elif isinstance(value, torch.Tensor) and value.shape[:1] == (size,):
                cut[key] = value[torch.tensor(rows, device=value.device)]
            else:
                raise MmtokError(f"{self.family}: cannot tell which images the processor output '{key}' belongs to")
        return Prepared(
            inputs=BatchFeature(cut), image_sizes=[prepared.image_sizes[r] for r in rows],
            images=[prepared.images[r] for r in rows] if prepared.images else [],
            keys=[prepared.keys[r] for r in rows] if prepared.keys else None,
            seeds=[prepared.seeds[r] for r in rows] if prepared.seeds else None,
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
        """Kept token indices per image for per-image budgets: `.indices` ascending (what the model is fed),
        `.order` the same in pick order; `params` are alpha / tau_t / tau_v, `seeds` one per image for "random".

        One batched selection with `method` (MMTok or a baseline, see `baselines.choose`) over each
        image's tokens; for images of several views (`tokens.parts`), `budget` says how (options.BUDGETS):
        "total" splits each image's budget evenly over its views, "per-view" gives every view the budget,
        "global" selects over all the views at once (see views.py). `zip_inputs`: what "visionzip" reads
        (`visionzip_inputs`).
        """
        check_conventions(budget=budget)
        seed = {} if seeds is None else {"seed": seeds}
        common = {"divprune_on": self.divprune_on, "zip_inputs": zip_inputs, **params}
        if tokens.parts is not None and budget != "global":
            return select_per_view(
                tokens.vision, tokens.features, tokens.parts, tokens.allowed, text, text_mask, budgets,
                mode=budget, method=method, seeds=seeds, **common,
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

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Image `row`'s vision tokens as boxes of its original image, numbered like `kept_indices`."""
        raise MmtokError(f"{self.family} models cannot show which image regions their tokens cover yet")


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


def drop_placeholders(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_id: int, keep: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorten each row's run of `token_id` placeholders to `keep[row]` and re-pad the batch on the left.

    Placeholders are identical, so which ones are dropped does not matter: the kept features are
    scattered into the remaining ones in order.
    """
    is_placeholder = input_ids == token_id
    rank = is_placeholder.long().cumsum(1) - 1
    stays = attention_mask.bool() & ~(is_placeholder & (rank >= keep[:, None]))
    new_mask, (new_ids,) = compact(stays, input_ids, pad=pad_id)
    return new_ids, new_mask


def placeholder_stays(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_id: int, kept: list[torch.Tensor], counts: list[int]
) -> torch.Tensor:
    """(B, L) bool: the positions that stay when each row keeps the `kept[row]` of its `counts[row]` placeholders.

    Placeholders are numbered in sequence order across all of a row's `token_id` runs (e.g. one run per
    view), so the kept ones stay in place: what `compact` needs where the dropped ones are not simply the last.
    """
    chosen = torch.zeros(len(counts), max(counts), dtype=torch.bool, device=input_ids.device)
    for row, idx in enumerate(kept):
        chosen[row, idx.to(input_ids.device)] = True
    is_placeholder = input_ids == token_id
    rank = (is_placeholder.long().cumsum(1) - 1).clamp(min=0, max=chosen.shape[1] - 1)
    return attention_mask.bool() & (~is_placeholder | chosen.gather(1, rank))


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
