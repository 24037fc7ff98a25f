"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`, e.g. llava-hf/llava-v1.6-vicuna-7b-hf).

Any-resolution input: a base view of the whole image plus a grid of high-resolution crops. The model
packs them into one sequence: the base view's tokens, then the crop grid stitched together with its
padding removed ("unpad"), each row followed by a learned row-newline token. The image's n tokens
are the packed tokens without the newlines, in that order; `kept_indices` index them.

`--tokens K` is the total per image. By default it is split evenly over the base view and the crops
(the paper's 32 x 5 = 160), each part choosing its own tokens (views.py; `--budget` chooses
another split). Row newlines are dropped when pruning; `k >= n` feeds the packed
sequence unchanged, newlines included, i.e. exactly the unpruned model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.image_processing_utils import select_best_resolution
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..baselines import ZipInputs
from ..errors import MmtokError
from ..selection import TAU_T_LLAVA
from .base import (
    Adapter,
    Piece,
    Prepared,
    VisionTokens,
    compact,
    input_counts,
    kept_by_input,
    lay_out,
    per_image,
    placeholder_stays,
)
from .llava import ClipVisionTokens, clip_zip_inputs, hidden_states_to_keep, projector_input, read_layer
from .regions import Box, Placement, TokenRegions, cell_box, clip, resize_and_crop, size_value

_NEWLINE, _Y, _X, _VIEW = 0, 1, 2, 3
"""Columns of `LlavaNextAdapter._probe`'s rows; the view weights start at `_VIEW`, then the features."""


@dataclass
class NextVisionTokens(ClipVisionTokens):
    """`parts`: each image's base view, then its crops (numbered over the item's images)."""

    packed: list[list[torch.Tensor]] | None = per_image()
    """Per item, each image's packed sequence as the model builds it, newlines included: what an image that keeps
    every token feeds."""


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
        sizes = prepared.inputs["image_sizes"]
        # LLaVA-OneVision: the images of a prompt of several get no crops
        per_row = prepared.inputs.get("batch_num_images")
        out = self.model.get_image_features(
            pixel_values=prepared.inputs["pixel_values"], image_sizes=sizes, return_dict=True,
            **({} if per_row is None else {"batch_num_images": per_row}), **hidden_states_to_keep(self.model.config),
        )
        packed = list(out.pooler_output)
        features = projector_input(self.model.config, out.hidden_states)  # (all views, hw, e)
        views = self._views(sizes, per_row)
        probes = self._probe(sizes, views, features.shape[1], features)
        pieces = []
        for seq, probe in zip(packed, probes):
            token = probe[:, _NEWLINE] < 0.5
            # a token resampled from several views (LLaVA-OneVision) belongs to the one that weighs most
            pieces.append(Piece(vision=seq[token], features=probe[token, _VIEW + max(views):].to(features.dtype),
                                views=probe[token, _VIEW : _VIEW + max(views)].argmax(-1)))
        layout = prepared.layout()
        order = [i for row in layout for _, i in row]
        fields = lay_out([pieces[i] for i in order], [len(row) for row in layout])
        zip_layer = read_layer(self.model.config, out.hidden_states)  # None where visionzip cannot run
        layer_input, layer_cls = zip_layer or (None, None)
        sources = None
        if zip_layer is not None:
            numbers = self._sources(sizes, views, features.shape[1])
            sources = pad_sequence([torch.cat([numbers[i] for _, i in row]) for row in layout], batch_first=True,
                                   padding_value=-1)
        return NextVisionTokens(
            **fields,
            layer_input=layer_input,
            layer_cls=layer_cls,
            sources=sources,
            packed=[[packed[i] for _, i in row] for row in layout],
            views=[sum(views[i] for _, i in row) for row in layout],
        )

    def visionzip_inputs(self, prepared: Prepared, tokens: VisionTokens) -> ZipInputs:
        assert isinstance(tokens, NextVisionTokens)
        return clip_zip_inputs(self.model, tokens)

    def _sources(self, sizes: torch.Tensor, views: list[int], per_view: int) -> list[torch.Tensor]:
        """Per image, each token's view (counted over the batch) * per_view + its patch in the view, in packed
        order without newlines: running numbers (float64, so exact) through the model's own packing."""
        numbers = torch.arange(sum(views) * per_view, dtype=torch.float64, device=sizes.device)
        newline = torch.full((1,), -1.0, dtype=torch.float64, device=sizes.device)
        packed = self._pack(list(numbers.view(-1, per_view, 1).split(views)), sizes, newline)
        return [p[p[:, 0] >= 0, 0].long() for p in packed]

    def _views(self, sizes: torch.Tensor, per_row: torch.Tensor | None = None) -> list[int]:
        """Views per image: the base view plus the crops of its any-resolution grid; only the base view where the
        model takes no crops (`per_row`: LLaVA-OneVision's images per prompt, crops only for a prompt of one)."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        cropped = [True] * len(sizes) if per_row is None else [n == 1 for n in per_row.tolist() for _ in range(n)]
        return [image_size_to_num_patches(s, config.image_grid_pinpoints, config.vision_config.image_size) if crop
                else 1 for s, crop in zip(sizes, cropped)]

    def _pack(self, views: list[torch.Tensor], sizes: torch.Tensor, newline: torch.Tensor) -> list[torch.Tensor]:
        """The model's own packing of each image's (views, hw, c) rows, `newline` where it puts its row newlines."""
        packed, _ = self.model.model.pack_image_features(
            views, sizes, vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
            image_newline=newline,
        )
        return packed

    def _probe(
        self, sizes: torch.Tensor, views: list[int], per_view: int, features: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Per image, where each position of its packed sequence comes from, as the model's own packing says.

        Packs, instead of V, rows of [is a newline, y, x, one-hot view..., `features`...] (`_NEWLINE`, `_Y`, `_X`,
        `_VIEW`): (y, x) is the patch centre in patches, in its view for the base view and in the stitched crop
        grid for the crops. Unpadding only moves rows, so they come out exactly; where the packing resamples the
        crop grid (LLaVA-OneVision), they come out resampled the same way as V: (y, x) then is the centre of the
        grid cell the token stands for, the view weights say how much of it each view gave, and `features` (U)
        line up one to one with V.
        """
        config = self.model.config
        per_side = math.isqrt(per_view)
        side = config.vision_config.image_size
        dtype = torch.float32 if features is None else features.dtype
        width = max(views)
        grids = []
        for n_views, size in zip(views, sizes.tolist()):
            best_h, best_w = select_best_resolution(size, config.image_grid_pinpoints)
            cols = best_w // side  # crops per grid row, in the processor's row-major order
            view = torch.arange(n_views)[:, None].expand(n_views, per_view)
            patch = torch.arange(per_view)[None].expand(n_views, per_view)
            crop = (view - 1).clamp(min=0)
            at_y = (patch // per_side + (view > 0) * (crop // cols) * per_side).to(dtype)
            at_x = (patch % per_side + (view > 0) * (crop % cols) * per_side).to(dtype)
            onehot = torch.nn.functional.one_hot(view, width).to(dtype)
            grids.append(torch.cat([torch.zeros(n_views, per_view, 1, dtype=dtype), at_y[..., None] + 0.5,
                                    at_x[..., None] + 0.5, onehot], -1).to(sizes.device))
        probe = torch.cat(grids)
        if features is not None:
            probe = torch.cat([probe, features], -1)
        newline = torch.zeros(probe.shape[-1], dtype=dtype, device=sizes.device)
        newline[_NEWLINE] = 1
        return self._pack(list(probe.split(views)), sizes, newline)

    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        assert isinstance(tokens, NextVisionTokens)
        input_ids, attention_mask = prepared.inputs["input_ids"], prepared.inputs["attention_mask"]
        if kept is None:
            kept = [torch.arange(n, device=tokens.vision.device) for n in tokens.counts]
        fed, slots, runs = [], [], []
        for row, (packed, pieces, sizes) in enumerate(zip(tokens.packed, kept_by_input(tokens, kept),
                                                          input_counts(tokens))):
            start, run, row_slots = 0, 0, []
            for seq, local, size in zip(packed, pieces, sizes, strict=True):
                # an image that keeps everything: the model's own sequence, newlines included
                piece = seq if len(local) == size else tokens.vision[row, local.to(tokens.vision.device) + start]
                fed.append(piece)
                # its placeholders are identical: it keeps the first len(piece) of its run
                row_slots.append(torch.arange(run, run + len(piece), device=input_ids.device))
                start, run = start + size, run + len(seq)
            slots.append(torch.cat(row_slots))
            runs.append(run)
        if any(len(s) < n for s, n in zip(slots, runs)):
            stays = placeholder_stays(input_ids, attention_mask, self.image_token_id, slots, runs)
            attention_mask, (input_ids,) = compact(stays, input_ids, pad=self.tokenizer.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=fed)},
        }

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Base-view tokens cover the whole image coarsely (panel "base"); crop tokens cover their part of the
        high-resolution grid, mapped back through the any-resolution resize and padding (panel "crops").

        Where each packed token comes from is the model's own packing (unpadding and any resampling included, see
        `_probe`); a resampled token covers its cell of the resampled grid.
        """
        from transformers.models.llava_next.modeling_llava_next import unpad_image

        config, ip = self.model.config, self.processor.image_processor
        vc = config.vision_config
        height, width = prepared.image_sizes[row]
        side, patch = vc.image_size, vc.patch_size
        per_side = side // patch
        sizes = prepared.inputs["image_sizes"][row : row + 1]
        probe = self._probe(sizes, self._views(sizes), per_side * per_side)[0]

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
        # Size of a token's cell in patches: 1, or more where the model resampled the unpadded crop grid.
        newline = probe[:, _NEWLINE] > 0.5
        out_h = int(newline[per_side * per_side :].sum())
        out_w = (len(probe) - per_side * per_side - out_h) // max(out_h, 1)
        stitched = torch.empty(1, best_h // side * per_side, best_w // side * per_side)
        in_h, in_w = unpad_image(stitched, sizes[0]).shape[1:]
        cell_h, cell_w = (in_h / out_h, in_w / out_w) if out_h else (1.0, 1.0)

        boxes: list[Box] = []
        panel: list[int] = []
        for y, x, view in zip(probe[~newline, _Y].tolist(), probe[~newline, _X].tolist(),
                              probe[~newline, _VIEW:].argmax(-1).tolist()):
            if view == 0:
                box = base.to_original(cell_box(y - 0.5, x - 0.5, patch, patch))
            else:
                (ky0, y0, ky1, y1), (kx0, x0, kx1, x1) = (
                    _crop_span(c - size / 2, c + size / 2, per_side) for c, size in ((y, cell_h), (x, cell_w))
                )
                x0, y0, x1, y1 = in_crop.to_original((x0 * patch, y0 * patch, x1 * patch, y1 * patch))
                box = grid.to_original((x0 + kx0 * crop, y0 + ky0 * crop, x1 + kx1 * crop, y1 + ky1 * crop))
            boxes.append(clip(box, height, width))
            panel.append(int(view > 0))
        return TokenRegions(boxes=boxes, panel=panel, panels=("base", "crops"))


def _crop_span(start: float, end: float, per_side: int) -> tuple[int, float, int, float]:
    """A span of the stitched crop grid (in patches) as (crop, offset in it) of each end. An end on a crop
    border belongs to the crop before it, so that a span that ends with a crop's last patch ends in that crop
    (where a vision tower leaves the crop's last pixels unused, e.g. 27 x 14 of SigLIP's 384, the two differ)."""
    first = int(start // per_side)
    last = max(math.ceil(end / per_side) - 1, first)
    return first, start - first * per_side, last, end - last * per_side


def _fit(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The size an image is resized to inside a target resolution, aspect kept (transformers' get_patch_output_size)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)
