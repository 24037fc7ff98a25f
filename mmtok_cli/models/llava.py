"""LLaVA-1.5 (`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..baselines import ZipInputs
from ..errors import MmtokError
from ..selection import TAU_T_LLAVA
from .base import (
    VISIONZIP_FAMILIES,
    Adapter,
    Piece,
    Prepared,
    VisionTokens,
    compact,
    lay_out,
    padded,
    per_image,
    per_view,
    placeholder_stays,
)
from .regions import Placement, TokenRegions, cell_box, clip, resize_and_crop


def projector_input(config: Any, hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """U: the projector's input, from the same vision layer(s) and CLS handling the model itself uses."""
    layers = config.vision_feature_layer
    features = hidden[layers] if isinstance(layers, int) else torch.cat([hidden[i] for i in layers], -1)
    if config.vision_feature_select_strategy == "default":
        features = features[:, 1:]
    return features


@dataclass
class ClipVisionTokens(VisionTokens):
    """What `visionzip` needs from a CLIP tower, kept by reference (nothing is computed unless it runs)."""

    layer_input: torch.Tensor | None = per_view()
    """(views, 1 + hw, e) the input of the vision layer the model reads (CLS first), every view of the batch."""
    layer_cls: torch.Tensor | None = per_view()
    """(views, e) that layer's output at the CLS token."""
    sources: torch.Tensor | None = padded(-1, default=None)
    """(B, n) long: each token's view (counted over the batch) * hw + its patch in the view; -1 for padding.
    None (as the two above) where visionzip cannot run."""
    views: list[int] | None = per_image()
    """Each item's views (of all its images): its rows of `layer_input`."""

    def split(self) -> list[ClipVisionTokens]:
        pieces = super().split()
        if self.sources is not None:  # count each image's views from its own first
            starts = torch.tensor([0, *self.views[:-1]]).cumsum(0).tolist()
            hw = self.layer_input.shape[1] - 1
            for piece, start in zip(pieces, starts):
                piece.sources -= start * hw
        return pieces

    @classmethod
    def join(cls, items: Sequence[ClipVisionTokens]) -> ClipVisionTokens:
        if items[0].sources is not None:
            hw = items[0].layer_input.shape[1] - 1
            starts = torch.tensor([0, *(item.views[0] for item in items[:-1])]).cumsum(0).tolist()
            items = [replace(item, sources=item.sources + start * hw) for item, start in zip(items, starts)]
        return super().join(items)


def _zip_layer(config: Any) -> int | None:
    """The hidden-state index the model reads, where visionzip can run on it (one layer of a CLIP tower whose CLS
    the model drops, and not the embeddings); None otherwise."""
    layer = config.vision_feature_layer
    if not isinstance(layer, int) or config.vision_feature_select_strategy != "default":
        return None
    if getattr(config.vision_config, "model_type", "") != "clip_vision_model":
        return None
    return layer if layer % (config.vision_config.num_hidden_layers + 1) >= 1 else None


def hidden_states_to_keep(config: Any) -> dict[str, Any]:
    """`get_image_features` keywords that also keep the read layer's input (the hidden state before it) for
    visionzip; transformers otherwise records only the hidden states the model reads."""
    layer = _zip_layer(config)
    return {} if layer is None else {"output_hidden_states": [layer - 1, layer]}


def read_layer(config: Any, hidden: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(input, output's CLS) of the one vision layer the model reads, or None where visionzip cannot run."""
    layer = _zip_layer(config)
    if layer is None or hidden[layer - 1] is None:
        return None
    return hidden[layer - 1], hidden[layer][:, 0]  # hidden[j] is layer j - 1's output and layer j's input


def clip_zip_inputs(model: Any, tokens: ClipVisionTokens) -> ZipInputs:
    """VisionZip's inputs recomputed from the read layer's own weights (no eager attention for the whole tower):
    the CLS query's softmax attention over the layer's keys, summed over heads, and the keys averaged over heads."""
    if tokens.layer_input is None or tokens.sources is None:
        raise MmtokError(f"visionzip works on {VISIONZIP_FAMILIES} checkpoints with a CLIP tower read at one layer "
                         "without its CLS token (vision_feature_layer an int, vision_feature_select_strategy "
                         "'default'); this checkpoint has another layout")
    tower = model.model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers  # transformers 5 dropped the inner vision_model
    layer = layers[model.config.vision_feature_layer % (len(layers) + 1) - 1]  # as read_layer
    attn = layer.self_attn
    x = layer.layer_norm1(tokens.layer_input)
    views, length, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    query = (attn.q_proj(x[:, :1]) * attn.scale).view(views, 1, heads, head_dim).transpose(1, 2)
    keys = attn.k_proj(x).view(views, length, heads, head_dim).transpose(1, 2)  # (views, heads, 1 + hw, dh)
    weights = torch.softmax((query.float() @ keys.float().transpose(-1, -2)), dim=-1)  # (views, heads, 1, 1 + hw)
    hw = length - 1
    source = tokens.sources.clamp_min(0)
    return ZipInputs(
        attention=weights[:, :, 0, 1:].sum(1).flatten()[source],
        keys=keys.mean(1)[:, 1:].flatten(0, 1)[source],
        cls=tokens.layer_cls[source // hw],
        project=model.model.multi_modal_projector,
    )


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    tau_t = TAU_T_LLAVA
    example = "llava-hf/llava-1.5-7b-hf"
    budget = "K of the image's patch tokens (576 = 24 x 24 for the 336-px checkpoints)"
    fallback_prompt = "USER: {image}\n{question} ASSISTANT:"

    @staticmethod
    def model_class() -> type:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def encode(self, prepared: Prepared) -> ClipVisionTokens:
        config = self.model.config
        pixels = prepared.inputs["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels, return_dict=True, **hidden_states_to_keep(config))
        vision = torch.stack(list(out.pooler_output))  # (images, n, d)
        features = projector_input(config, out.hidden_states)
        allowed = self._content_patches(prepared.image_sizes, pixels.shape[-2:]).to(vision.device)
        if allowed.shape != vision.shape[:2]:  # an unusual layout: do not guess, allow everything
            allowed = torch.ones(vision.shape[:2], dtype=torch.bool, device=vision.device)
        layout = prepared.layout()
        order = [i for row in layout for _, i in row]
        fields = lay_out([Piece(vision=vision[i], features=features[i], allowed=allowed[i]) for i in order],
                         [len(row) for row in layout])
        layer_input, layer_cls = read_layer(config, out.hidden_states) or (None, None)
        sources = None
        if layer_input is not None:  # each token's image (its view) * n + its patch, as the batch's rows hold them
            n = vision.shape[1]
            numbers = torch.arange(len(vision) * n, device=vision.device).view(len(vision), n)
            sources = pad_sequence([torch.cat([numbers[i] for _, i in row]) for row in layout], batch_first=True,
                                   padding_value=-1)
        return ClipVisionTokens(**fields, layer_input=layer_input, layer_cls=layer_cls, sources=sources,
                                views=[len(row) for row in layout])

    def visionzip_inputs(self, prepared: Prepared, tokens: VisionTokens) -> ZipInputs:
        assert isinstance(tokens, ClipVisionTokens)
        return clip_zip_inputs(self.model, tokens)

    def _content_patches(self, sizes: list[tuple[int, int]], grid_hw: torch.Size) -> torch.Tensor:
        """(B, n) bool: False for patches made only of pad-to-square padding (processor `do_pad`).

        Maps each final patch back through center crop and resize to the padded square and checks
        whether it overlaps the band holding the real image.
        """
        ip = self.processor.image_processor
        patch = self.model.config.vision_config.patch_size
        height, width = int(grid_hw[0]), int(grid_hw[1])
        rows, cols = height // patch, width // patch
        if not getattr(ip, "do_pad", False):
            return torch.ones(len(sizes), rows * cols, dtype=torch.bool)
        size = ip.size if isinstance(ip.size, dict) else vars(ip.size)
        edge = size.get("shortest_edge")
        resized_h = edge or size.get("height") or height
        resized_w = edge or size.get("width") or width
        off_y, off_x = (resized_h - height) // 2, (resized_w - width) // 2  # center crop offsets (0 if none)
        masks = []
        for h, w in sizes:
            side = max(h, w)
            # Patch extent in the padded square's pixels, widened by 2 output pixels for resampling blur.
            ys = (torch.arange(rows) * patch + off_y - 2) * side / resized_h
            ye = (torch.arange(rows) * patch + patch + off_y + 2) * side / resized_h
            xs = (torch.arange(cols) * patch + off_x - 2) * side / resized_w
            xe = (torch.arange(cols) * patch + patch + off_x + 2) * side / resized_w
            top, left = (side - h) // 2, (side - w) // 2
            row_ok = (ye > top) & (ys < top + h)
            col_ok = (xe > left) & (xs < left + w)
            masks.append((row_ok[:, None] & col_ok[None, :]).flatten())
        return torch.stack(masks)

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Each patch mapped back through center crop, resize and pad-to-square (`do_pad`) to the original image."""
        height, width = prepared.image_sizes[row]
        placement, pixels = clip_input_placement(self.processor.image_processor, height, width)
        if pixels != tuple(prepared.inputs["pixel_values"].shape[-2:]):
            raise MmtokError(f"cannot map vision tokens to the image: expected {pixels} pixels per image, "
                             f"the processor made {tuple(prepared.inputs['pixel_values'].shape[-2:])}")
        patch = self.model.config.vision_config.patch_size
        boxes = [
            clip(placement.to_original(cell_box(r, c, patch, patch)), height, width)
            for r in range(pixels[0] // patch)
            for c in range(pixels[1] // patch)
        ]
        if self.model.config.vision_feature_select_strategy == "full":  # CLS comes first and is no region
            boxes.insert(0, (0.0, 0.0, 0.0, 0.0))
        return TokenRegions(boxes=boxes, panel=[0] * len(boxes))

    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        return feed_in_order(self, prepared, tokens, kept, listed=True)


def feed_in_order(
    adapter: Adapter, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None, *, listed: bool
) -> dict:
    """`generate`'s inputs for families whose placeholders are one per vision token, in the row's token order (each
    image's run after the previous one's) and whose positions are plain 1-D: the dropped tokens' placeholders go, the
    kept tokens fill the rest in order, the prompt is renumbered. The model gets the kept rows as one (total, d)
    tensor in a list (`listed`, as LLaVA concatenates them) or as a (1, total, d) tensor (InternVL)."""
    input_ids, attention_mask = prepared.inputs["input_ids"], prepared.inputs["attention_mask"]
    counts = tokens.counts
    if kept is None:
        kept = [torch.arange(n, device=tokens.vision.device) for n in counts]
    if any(len(idx) < n for idx, n in zip(kept, counts)):
        stays = placeholder_stays(input_ids, attention_mask, adapter.image_token_id, kept, counts)
        attention_mask, (input_ids,) = compact(stays, input_ids, pad=adapter.tokenizer.pad_token_id)
    # The model scatters the batch's rows, concatenated, into its placeholders in sequence order.
    fed = torch.cat([v[idx] for v, idx in zip(tokens.vision, kept)])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=[fed] if listed else fed[None])},
    }


def clip_input_placement(image_processor: Any, height: int, width: int) -> tuple[Placement, tuple[int, int]]:
    """Where a `height` x `width` image lands in LLaVA-1.5's vision input, and that input's (height, width).

    The processor pads to a square of the longest side with the image centred (`do_pad`, the original
    LLaVA preprocessing), then resizes (shortest edge) and center-crops.
    """
    placement, canvas = Placement(), (height, width)
    if getattr(image_processor, "do_pad", False):
        side = max(height, width)
        placement, canvas = placement.then(off_x=(side - width) // 2, off_y=(side - height) // 2), (side, side)
    return resize_and_crop(image_processor, placement, *canvas)
