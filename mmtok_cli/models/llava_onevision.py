"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, e.g. llava-hf/llava-onevision-qwen2-7b-ov-hf).

Any-resolution like LLaVA-NeXT (a base view plus a grid of crops, packed with learned row newlines that
have no token id of their own), with a SigLIP tower (no CLS token: every patch is a token) and a Qwen2
LLM. One difference in the packing ("anyres_max_9", `vision_aspect_ratio`): when the unpadded crop grid
holds more than 9 views' worth of tokens, the model shrinks it with bilinear interpolation, so a packed
crop token is then a blend of up to four neighbouring patches, not one patch. The adapter learns that
from the model's own packing (LlavaNextAdapter._probe): U is the pre-projector features packed through
the same packing, so it is resampled exactly like V and lines up one to one with it; a resampled token
counts towards the crop that gave it the largest weight; `mmtok show` draws it as its cell of the
resampled grid.

`--tokens K` is the total per image, split evenly over the base view and the crops (views.py) as for
NeXT; row newlines are dropped when pruning; `k >= n` feeds the packed sequence unchanged.
"""

from __future__ import annotations

import torch

from .llava_next import LlavaNextAdapter


class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava-onevision"
    model_types = ("llava_onevision",)
    example = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    budget = ("K in total, split evenly over the base view and the crops (after the model's anyres_max_9 "
              "downsampling of large crop grids); row newlines dropped")
    fallback_prompt = "<|im_start|>user\n{image}\n{question}<|im_end|>\n<|im_start|>assistant\n"
    nested_images = True
    """The processor counts each prompt's images (`batch_num_images`): a prompt of several gets no crops."""

    @staticmethod
    def model_class() -> type:
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    @staticmethod
    def processor_class() -> type:
        from transformers import LlavaOnevisionProcessor

        return LlavaOnevisionProcessor

    def _pack(self, views: list[torch.Tensor], sizes: torch.Tensor, newline: torch.Tensor) -> list[torch.Tensor]:
        packed, _ = self.model.model.pack_image_features(
            views, sizes, image_newline=newline, vision_aspect_ratio=self.model.config.vision_aspect_ratio
        )
        return packed
