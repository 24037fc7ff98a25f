"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`, e.g. llava-hf/llava-v1.6-vicuna-7b-hf).

Any-resolution input: a base view of the whole image plus a grid of high-resolution crops. The model
packs them into one sequence: the base view's tokens, then the crop grid stitched together with its
padding removed ("unpad"), each row followed by a learned row-newline token. The image's n tokens
are the packed tokens without the newlines, in that order; `kept_indices` index them.

`--tokens K` is the total per image. By default it is split evenly over the base view and the crops
(the paper's 32 x 5 = 160), each part choosing its own tokens (views.py; `view_budget` chooses
another split). Row newlines are dropped when pruning; `k >= n` feeds the packed
sequence unchanged, newlines included, i.e. exactly the unpruned model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import MmtokError
from ..selection import TAU_T_LLAVA
from ..baselines import ZipInputs
from .base import Adapter, Prepared, VisionTokens, drop_placeholders
from .llava import ClipVisionTokens, clip_zip_inputs, hidden_states_to_keep, projector_input, read_layer
from .regions import Box, Placement, TokenRegions, cell_box, clip, resize_and_crop, size_value


@dataclass
class NextVisionTokens(ClipVisionTokens):
    """`parts`: 0 = base view, 1.. = crops."""

    packed: list[torch.Tensor] | None = None
    """Each image's packed sequence as the model builds it, newlines included: what k >= n feeds."""


class LlavaNextAdapter(Adapter):
    family = "llava-next"
    model_types = ("llava_next",)
    tau_t = TAU_T_LLAVA
    example = "llava-hf/llava-v1.6-vicuna-7b-hf"
    budget = "K in total, split evenly over the base view and the crops (e.g. 32 x 5); row newlines dropped"
    fallback_prompt = "USER: {image}\n{question} ASSISTANT:"

    @staticmethod
    def model_class() -> type:
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    def encode(self, prepared: Prepared) -> NextVisionTokens:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        sizes = prepared.inputs["image_sizes"]
        out = self.model.get_image_features(
            pixel_values=prepared.inputs["pixel_values"], image_sizes=sizes, return_dict=True,
            **hidden_states_to_keep(config),
        )
        packed = list(out.pooler_output)
        side = config.vision_config.image_size
        crops = [image_size_to_num_patches(s, config.image_grid_pinpoints, side) for s in sizes]
        features = projector_input(config, out.hidden_states)  # (all views, hw, e)
        per_view = features.shape[1]
        layouts = self._packed_sources(sizes, crops, per_view)
        flat = features.reshape(-1, features.shape[-1])
        vision, feats, parts, numbers = [], [], [], []
        first_view = 0
        for seq, source, n_views in zip(packed, layouts, crops):
            token = source >= 0
            number = source[token].long()
            vision.append(seq[token])
            feats.append(flat[number])
            parts.append(number // per_view - first_view)
            numbers.append(number)
            first_view += n_views
        vision_t = pad_sequence(vision, batch_first=True)
        mask = pad_sequence([torch.ones(len(v), dtype=torch.bool, device=vision_t.device) for v in vision], True)
        layer_input, layer_cls = read_layer(config, out.hidden_states) or (None, None)
        return NextVisionTokens(
            layer_input=layer_input,
            layer_cls=layer_cls,
            sources=pad_sequence(numbers, batch_first=True, padding_value=-1),
            vision=vision_t,
            features=pad_sequence(feats, batch_first=True),
            mask=mask,
            allowed=mask,
            parts=pad_sequence(parts, batch_first=True, padding_value=-1),
            packed=packed,
        )

    def visionzip_inputs(self, prepared: Prepared, tokens: VisionTokens) -> ZipInputs:
        assert isinstance(tokens, NextVisionTokens)
        return clip_zip_inputs(self.model, tokens)

    def _packed_sources(self, sizes: torch.Tensor, views: list[int], per_view: int) -> list[torch.Tensor]:
        """Per image, where each position of its packed sequence comes from: view * per_view + position in
        the view (views counted over the batch), or -1 for a row newline.

        Packs a running number instead of features through the model's own packing, so the answer is
        the model's, whatever its unpadding does.
        """
        numbers = torch.arange(sum(views) * per_view, dtype=torch.float64, device=sizes.device)
        layouts, _ = self.model.model.pack_image_features(
            list(numbers.view(-1, per_view, 1).split(views)),
            sizes,
            vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
            image_newline=torch.full((1,), -1.0, dtype=torch.float64, device=sizes.device),
        )
        return [layout[:, 0] for layout in layouts]

    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        assert isinstance(tokens, NextVisionTokens)
        input_ids, attention_mask = prepared.inputs["input_ids"], prepared.inputs["attention_mask"]
        counts = tokens.counts
        per_image = []
        for row, packed in enumerate(tokens.packed):
            if kept is None or len(kept[row]) == counts[row]:
                per_image.append(packed)  # everything kept: the model's own sequence, newlines included
            else:
                per_image.append(tokens.vision[row, kept[row]])
        lengths = torch.tensor([len(p) for p in per_image], device=input_ids.device)
        if bool((lengths < torch.tensor([len(p) for p in tokens.packed], device=input_ids.device)).any()):
            input_ids, attention_mask = drop_placeholders(
                input_ids, attention_mask, self.image_token_id, lengths, self.tokenizer.pad_token_id
            )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=per_image)},
        }

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Base-view tokens cover the whole image coarsely (panel "base"); crop tokens cover their part of the
        high-resolution grid, mapped back through the any-resolution resize and padding (panel "crops").

        Which view and patch each packed token comes from is the model's own packing (unpadding included).
        """
        from transformers.image_processing_utils import select_best_resolution
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config, ip = self.model.config, self.processor.image_processor
        vc = config.vision_config
        height, width = prepared.image_sizes[row]
        side, patch = vc.image_size, vc.patch_size
        per_side = side // patch
        sizes = prepared.inputs["image_sizes"][row : row + 1]
        views = image_size_to_num_patches(sizes[0], config.image_grid_pinpoints, side)
        source = self._packed_sources(sizes, [views], per_side * per_side)[0]

        # Base view: the whole image squashed to `size`, then the processor's per-view resize and crop.
        shortest = size_value(ip.size, "shortest_edge")
        base_h, base_w = size_value(ip.size, "height") or shortest, size_value(ip.size, "width") or shortest
        base, base_px = resize_and_crop(ip, Placement(base_w / width, base_h / height), base_h, base_w)
        # Crops: the image resized to fit the best grid resolution (aspect kept), centred with padding, cut into
        # squares of the crop size, each of which gets the per-view resize and crop too.
        crop = size_value(ip.crop_size, "height") or base_h
        best_h, best_w = select_best_resolution((height, width), config.image_grid_pinpoints)
        fit_h, fit_w = _fit(height, width, best_h, best_w)
        grid = Placement(fit_w / width, fit_h / height, (best_w - fit_w) // 2, (best_h - fit_h) // 2)
        in_crop, crop_px = resize_and_crop(ip, Placement(), crop, crop)
        if base_px != (side, side) or crop_px != (side, side):
            raise MmtokError(f"cannot map vision tokens to the image: views of {base_px} and {crop_px} pixels "
                             f"for a {side}-pixel vision tower")

        boxes: list[Box] = []
        panel: list[int] = []
        for number in source[source >= 0].long().tolist():
            view, position = divmod(number, per_side * per_side)
            cell = cell_box(*divmod(position, per_side), patch, patch)
            if view == 0:
                box = base.to_original(cell)
            else:
                x0, y0, x1, y1 = in_crop.to_original(cell)
                top, left = (d * crop for d in divmod(view - 1, best_w // crop))
                box = grid.to_original((x0 + left, y0 + top, x1 + left, y1 + top))
            boxes.append(clip(box, height, width))
            panel.append(int(view > 0))
        return TokenRegions(boxes=boxes, panel=panel, panels=("base", "crops"))


def _fit(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The size an image is resized to inside a target resolution, aspect kept (transformers' get_patch_output_size)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)
