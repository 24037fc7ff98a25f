"""LLaVA-1.5 (`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf)."""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..selection import TAU_T_LLAVA
from .base import Adapter, Prepared, VisionTokens, drop_placeholders


def projector_input(config: Any, hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """U: the projector's input, from the same vision layer(s) and CLS handling the model itself uses."""
    layers = config.vision_feature_layer
    features = hidden[layers] if isinstance(layers, int) else torch.cat([hidden[i] for i in layers], -1)
    if config.vision_feature_select_strategy == "default":
        features = features[:, 1:]
    return features


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

    def encode(self, prepared: Prepared) -> VisionTokens:
        config = self.model.config
        pixels = prepared.inputs["pixel_values"]
        out = self.model.get_image_features(pixel_values=pixels, return_dict=True)
        vision = torch.stack(list(out.pooler_output))
        features = projector_input(config, out.hidden_states)
        mask = torch.ones(vision.shape[:2], dtype=torch.bool, device=vision.device)
        allowed = self._content_patches(prepared.image_sizes, pixels.shape[-2:]).to(vision.device)
        if allowed.shape != mask.shape:  # an unusual layout: do not guess, allow everything
            allowed = mask
        return VisionTokens(vision=vision, features=features, mask=mask, allowed=allowed)

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

    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        input_ids, attention_mask = prepared.inputs["input_ids"], prepared.inputs["attention_mask"]
        if kept is None:
            per_image = list(tokens.vision)
        else:
            per_image = [v[idx] for v, idx in zip(tokens.vision, kept)]
            counts = torch.tensor([len(idx) for idx in kept], device=input_ids.device)
            if bool((counts < tokens.mask.sum(-1).to(counts.device)).any()):
                input_ids, attention_mask = drop_placeholders(
                    input_ids, attention_mask, self.image_token_id, counts, self.tokenizer.pad_token_id
                )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_image)},
        }
