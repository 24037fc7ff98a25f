"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`, e.g. llava-hf/llava-v1.6-vicuna-7b-hf).

Any-resolution input: a base view of the whole image plus a grid of high-resolution crops. The model
packs them into one sequence: the base view's tokens, then the crop grid stitched together with its
padding removed ("unpad"), each row followed by a learned row-newline token. The image's n tokens
are the packed tokens without the newlines, in that order; `kept_indices` index them.

`--tokens K` is the total per image. By default it is split evenly over the base view and the crops
(the paper's 32 x 5 = 160), each part choosing its own tokens; `crop_budget = "global"` selects over
all of them at once instead. Row newlines are dropped when pruning; `k >= n` feeds the packed
sequence unchanged, newlines included, i.e. exactly the unpruned model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..baselines import RANDOM_SEED, choose
from ..errors import MmtokError
from ..selection import TAU_T_LLAVA, Selection
from .base import Adapter, Prepared, VisionTokens, drop_placeholders
from .llava import projector_input
from .regions import Box, Placement, TokenRegions, cell_box, clip, resize_and_crop, size_value

CROP_BUDGETS = ("even", "global")


@dataclass
class NextVisionTokens(VisionTokens):
    parts: torch.Tensor | None = None
    """(B, n) long: which view each token comes from (0 = base view, 1.. = crops); -1 for batch padding."""
    packed: list[torch.Tensor] | None = None
    """Each image's packed sequence as the model builds it, newlines included: what k >= n feeds."""


def split_evenly(total: int, sizes: list[int]) -> list[int]:
    """Split a budget evenly over parts of the given sizes; what a small part cannot use goes to the others.

    Equal shares first (the remainder to the first parts), then water-filling: the sum is min(total, sum(sizes)).
    """
    budgets = [0] * len(sizes)
    left = min(total, sum(sizes))
    while left > 0:
        open_parts = [i for i, size in enumerate(sizes) if budgets[i] < size]
        share, extra = divmod(left, len(open_parts))
        for rank, i in enumerate(open_parts):
            give = min(share + (rank < extra), sizes[i] - budgets[i])
            budgets[i] += give
            left -= give
    return budgets


class LlavaNextAdapter(Adapter):
    family = "llava-next"
    model_types = ("llava_next",)
    tau_t = TAU_T_LLAVA
    example = "llava-hf/llava-v1.6-vicuna-7b-hf"
    budget = "K in total, split evenly over the base view and the crops (e.g. 32 x 5); row newlines dropped"
    fallback_prompt = "USER: {image}\n{question} ASSISTANT:"
    crop_budget: str = "even"
    """"even": split --tokens over the base view and the crops (the paper); "global": one selection over all.
    Set it on an engine's adapter: `engine.adapter.crop_budget = "global"`."""

    @staticmethod
    def model_class() -> type:
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    def encode(self, prepared: Prepared) -> NextVisionTokens:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        sizes = prepared.inputs["image_sizes"]
        out = self.model.get_image_features(
            pixel_values=prepared.inputs["pixel_values"], image_sizes=sizes, return_dict=True
        )
        packed = list(out.pooler_output)
        side = config.vision_config.image_size
        crops = [image_size_to_num_patches(s, config.image_grid_pinpoints, side) for s in sizes]
        features = projector_input(config, out.hidden_states)  # (all views, hw, e)
        per_view = features.shape[1]
        layouts = self._packed_sources(sizes, crops, per_view)
        flat = features.reshape(-1, features.shape[-1])
        vision, feats, parts = [], [], []
        first_view = 0
        for seq, source, n_views in zip(packed, layouts, crops):
            token = source >= 0
            number = source[token].long()
            vision.append(seq[token])
            feats.append(flat[number])
            parts.append(number // per_view - first_view)
            first_view += n_views
        vision_t = pad_sequence(vision, batch_first=True)
        mask = pad_sequence([torch.ones(len(v), dtype=torch.bool, device=vision_t.device) for v in vision], True)
        return NextVisionTokens(
            vision=vision_t,
            features=pad_sequence(feats, batch_first=True),
            mask=mask,
            allowed=mask,
            parts=pad_sequence(parts, batch_first=True, padding_value=-1),
            packed=packed,
        )

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

    def select(
        self, tokens: VisionTokens, text: torch.Tensor, text_mask: torch.Tensor, budgets: list[int],
        method: str = "mmtok", seeds: Sequence[int] | None = None, **params: float,
    ) -> Selection:
        """Per-view selection with the budget split evenly over the views (or one global selection).

        The image's pick order interleaves its views by pick rank: every view's first pick (base view first,
        then the crops), then every view's second pick, and so on, as the views choose independently and
        at once. An image that keeps all its tokens is in index order. `gains` are left empty: each view's
        are on its own scale.
        """
        assert isinstance(tokens, NextVisionTokens)
        if self.crop_budget not in CROP_BUDGETS:
            raise ValueError(f"crop_budget must be one of {CROP_BUDGETS}, not {self.crop_budget!r}")
        if self.crop_budget == "global":
            return super().select(tokens, text, text_mask, budgets, method, seeds, **params)
        # One row per (image, view): each view selects its share of the image's budget from its own tokens.
        rows, row_image, row_k, row_seed = [], [], [], []
        for image, (parts, total) in enumerate(zip(tokens.parts, budgets)):
            members = [(parts == p).nonzero().flatten() for p in range(int(parts.max()) + 1)]
            for view, (idx, k) in enumerate(zip(members, split_evenly(total, [len(m) for m in members]))):
                if k > 0:
                    rows.append(idx)
                    row_image.append(image)
                    row_k.append(k)
                    row_seed.append((RANDOM_SEED if seeds is None else seeds[image]) + view)  # views draw apart
        index = pad_sequence(rows, batch_first=True)
        row_mask = pad_sequence([torch.ones(len(r), dtype=torch.bool, device=index.device) for r in rows], True)
        images = torch.tensor(row_image, device=index.device)
        # Index image and token at once: only each view's own tokens are copied, not its whole image per view.
        # Padding positions read token 0; row_mask hides them.
        at = (images[:, None], index)
        chosen = choose(
            method,
            tokens.vision[at],
            tokens.features[at],
            text[images],
            k=row_k,
            vision_mask=row_mask,
            allowed=tokens.allowed[at] & row_mask,
            text_mask=text_mask[images],
            seed=row_seed,
            **params,
        )
        device = tokens.vision.device
        views: list[list[torch.Tensor]] = [[] for _ in budgets]  # per image, each view's picks in pick order
        for image, idx, order in zip(row_image, rows, chosen.order):
            views[image].append(idx[order])
        counts = tokens.counts
        indices, orders = [], []
        for image, picks in enumerate(views):
            if not picks:  # a budget of 0
                indices.append(torch.zeros(0, dtype=torch.long, device=device))
                orders.append(indices[-1])
                continue
            ranks = torch.cat([torch.arange(len(p), device=device) for p in picks])
            # A stable sort by rank keeps the views in order within each rank.
            order = torch.cat(picks)[torch.sort(ranks, stable=True).indices]
            indices.append(torch.sort(order).values)
            orders.append(indices[-1] if len(order) == counts[image] else order)
        no_gains = torch.full((len(budgets), 0), float("nan"), device=device)
        return Selection(indices=indices, order=orders, gains=no_gains)

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
