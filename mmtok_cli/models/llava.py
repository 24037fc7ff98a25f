"""LLaVA-1.5 (`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf)."""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..selection import TAU_T_LLAVA
from .base import Adapter, VisionTokens, drop_placeholders


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    tau_t = TAU_T_LLAVA
    example = "llava-hf/llava-1.5-7b-hf"

    @staticmethod
    def model_class() -> type:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def encode(self, inputs: Any) -> VisionTokens:
        config = self.model.config
        out = self.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
        vision = torch.stack(list(out.pooler_output))
        # U is the projector's input: the same layer(s) and CLS handling the model itself uses.
        layers = config.vision_feature_layer
        hidden = out.hidden_states
        features = hidden[layers] if isinstance(layers, int) else torch.cat([hidden[i] for i in layers], -1)
        if config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        mask = torch.ones(vision.shape[:2], dtype=torch.bool, device=vision.device)
        return VisionTokens(vision=vision, features=features, mask=mask, allowed=mask)

    def generation_inputs(self, inputs: Any, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        if kept is None:
            per_image = list(tokens.vision)
        else:
            per_image = [v[idx] for v, idx in zip(tokens.vision, kept)]
            counts = torch.tensor([len(idx) for idx in kept], device=input_ids.device)
            if bool((counts < tokens.mask.sum(-1).to(counts.device)).any()):
                pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
                input_ids, attention_mask = drop_placeholders(
                    input_ids, attention_mask, self.image_token_id, counts, pad_id
                )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_image)},
        }
