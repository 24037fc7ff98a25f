"""Gemma 3 (`Gemma3ForConditionalGeneration`, e.g. google/gemma-3-12b-it).

Every image becomes a fixed number of soft tokens (`mm_tokens_per_image`, 256 on the real checkpoints):
the SigLIP grid (64 x 64 patches at 896 px) average-pooled to 16 x 16, RMS-normed and projected. They sit
between `<start_of_image>` and `<end_of_image>`, and the language model lets them attend to each other
bidirectionally, marked by `token_type_ids` (1 on the soft tokens). V is the projector's output, U the
SigLIP features the projector reads, average-pooled over the same windows, so they line up one to one.

Pruning shortens each image block to its kept tokens and `token_type_ids` with it, so the kept tokens
still form one bidirectional block. Positions are plain 1-D RoPE, renumbered like any shortened prompt.

Pan-and-scan (`do_pan_and_scan`, off by default on the real checkpoints) adds crops of a long image, each
its own block after the whole image's. The whole image and its crops are views (`VisionTokens.parts`):
`--tokens K` is split evenly over them, as for LLaVA-NeXT, and `kept_indices` count the tokens in the order
the model reads them (the whole image's first, then each crop's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import MmtokError
from ..selection import TAU_T_LLAVA
from .base import Adapter, Prepared, VisionTokens, compact, placeholder_stays
from .regions import Placement, TokenRegions, cell_box, clip

PAN_AND_SCAN = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                "pan_and_scan_min_ratio_to_activate")


class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3",)
    tau_t = TAU_T_LLAVA  # the paper has no Gemma value; LLaVA's, not tuned (no real checkpoint here to tune on)
    example = "google/gemma-3-12b-it"
    budget = ("K of the image's soft tokens (256 = 16 x 16, pooled from SigLIP's 64 x 64 patches); with "
              "pan-and-scan, K in total split evenly over the image and its crops")
    fallback_prompt = "<start_of_turn>user\n{image}{question}<end_of_turn>\n<start_of_turn>model\n"
    has_pan_and_scan = True
    pan_and_scan: bool | None = None
    """Crop long images into extra views: None follows the checkpoint's image processor (`do_pan_and_scan`).
    `Engine(pan_and_scan=True)` (`--pan-and-scan`) sets it."""

    @staticmethod
    def model_class() -> type:
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration

    def image_options(self) -> dict[str, Any]:
        """Pan-and-scan settings for the processor call: the image processor's own, where it has them.

        `Gemma3Processor` passes its class defaults (off, 256 px crops, ...) over the image processor's
        config, so a checkpoint's `do_pan_and_scan: true` would be ignored without this.
        """
        ip = self.processor.image_processor
        options = dict(getattr(self.processor, "images_kwargs", {}))
        options.update({name: getattr(ip, name) for name in PAN_AND_SCAN if getattr(ip, name, None) is not None})
        if self.pan_and_scan is not None:
            options["do_pan_and_scan"] = self.pan_and_scan
        return {name: options[name] for name in PAN_AND_SCAN if name in options}

    def pan_and_scan_in_use(self) -> bool:
        return bool(self.image_options().get("do_pan_and_scan"))

    def preprocess(
        self, images: list[Image.Image], questions: list[str], conversations: Sequence[list[dict] | None] | None = None
    ) -> Prepared:
        prompts = self.prompts(questions, conversations)
        # Gemma's chat template writes BOS itself: then the tokenizer must not add a second one (what transformers'
        # `apply_chat_template(tokenize=True)` does too); the fallback prompt has none and gets the tokenizer's.
        bos = self.tokenizer.bos_token
        written = bool(bos) and prompts[0].startswith(bos)
        # Gemma3Processor wants each prompt's images as a list of their own.
        inputs = self.processor(images=[[im] for im in images], text=prompts, padding=True, return_tensors="pt",
                                add_special_tokens=not written, **self.image_options())
        return Prepared(inputs=inputs.to(self.device), image_sizes=[(im.height, im.width) for im in images],
                        images=list(images))

    def _views(self, prepared: Prepared) -> list[int]:
        """How many views (the image, then its crops) each row's prompt holds: its soft tokens / tokens per view."""
        per_view = self.model.config.mm_tokens_per_image
        return ((prepared.inputs["input_ids"] == self.image_token_id).sum(1) // per_view).tolist()

    def cache_salt(self) -> str:
        return repr(sorted(self.image_options().items()))  # `pan_and_scan` can change between runs

    def pixel_rows(self, prepared: Prepared) -> list[int]:
        """Each image's views (the image, then its crops), concatenated over the batch."""
        return self._views(prepared)

    def encode(self, prepared: Prepared) -> VisionTokens:
        out = self.model.get_image_features(pixel_values=prepared.inputs["pixel_values"], return_dict=True)
        vision_all = out.pooler_output  # (all views of the batch, tokens per view, d)
        features_all = self._pooled(out.last_hidden_state)
        views = self._views(prepared)
        per_view = vision_all.shape[1]
        vision = list(vision_all.flatten(0, 1).split([v * per_view for v in views]))
        features = list(features_all.flatten(0, 1).split([v * per_view for v in views]))
        device = vision_all.device
        vision_t = pad_sequence(vision, batch_first=True)
        mask = pad_sequence([torch.ones(len(v), dtype=torch.bool, device=device) for v in vision], batch_first=True)
        parts = None
        if max(views) > 1:  # some image has crops: split its budget over its views
            parts = pad_sequence(
                [torch.arange(v, device=device).repeat_interleave(per_view) for v in views],
                batch_first=True, padding_value=-1,
            )
        return VisionTokens(vision=vision_t, features=pad_sequence(features, batch_first=True), mask=mask,
                            allowed=mask, parts=parts)

    def _pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """(views, tokens per view, e) SigLIP features pooled over the projector's own windows, in V's order."""
        projector = self.model.model.multi_modal_projector
        side = projector.patches_per_image
        grid = hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)
        return projector.avg_pool(grid).flatten(2).transpose(1, 2)

    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        inputs = prepared.inputs
        input_ids, attention_mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
        counts = tokens.counts
        if kept is None:
            kept = [torch.arange(n, device=tokens.vision.device) for n in counts]
        # Kept tokens in sequence order, the whole batch's in one run, as the model scatters them.
        features = torch.cat([tokens.vision[row, idx] for row, idx in enumerate(kept)])[None]
        if any(len(idx) < n for idx, n in zip(kept, counts)):
            stays = placeholder_stays(input_ids, attention_mask, self.image_token_id, kept, counts)
            # token_type_ids shrink with the blocks: the kept tokens of a view still see each other.
            attention_mask, (input_ids, types) = compact(stays, input_ids, types, pad=self.tokenizer.pad_token_id)
            types = types * attention_mask
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": types,
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)},
        }

    def crop_boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """The pan-and-scan crops of a `height` x `width` image as (x0, y0, x1, y1) boxes, none when it is not cropped.

        Runs the image processor's own `pan_and_scan` on an image of pixel coordinates, so the boxes are its own.
        """
        options = self.image_options()
        if not options.get("do_pan_and_scan"):
            return []
        ip = self.processor.image_processor
        # the PIL backend's method; the torchvision one's takes a tensor batch but slices the same way
        pan_and_scan = getattr(ip, "pan_and_scan", None) or ip.pan_and_scan_batched
        y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        crops = pan_and_scan(torch.stack([x, y]), **{k: v for k, v in options.items() if k != "do_pan_and_scan"})
        return [(int(c[0].min()), int(c[1].min()), int(c[0].max()) + 1, int(c[1].max()) + 1) for c in crops]

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Each soft token covers its pooling window (kernel x kernel patches) of its view; a view is the whole
        image or a pan-and-scan crop of it, squashed to the tower's square input (panels "image" and "crops")."""
        config = self.model.config
        height, width = prepared.image_sizes[row]
        views = [(0, 0, width, height), *self.crop_boxes(height, width)]
        if len(views) != self._views(prepared)[row]:
            raise MmtokError(f"cannot map vision tokens to the image: the processor made {self._views(prepared)[row]} "
                             f"views, the image processor's pan-and-scan {len(views)}")
        side = int(prepared.inputs["pixel_values"].shape[-1])
        per_side = int(config.mm_tokens_per_image**0.5)
        cell = side / per_side
        boxes, panel = [], []
        for number, (x0, y0, x1, y1) in enumerate(views):
            placement = Placement(off_x=-x0, off_y=-y0).then(side / (x1 - x0), side / (y1 - y0))
            for r in range(per_side):
                for c in range(per_side):
                    boxes.append(clip(placement.to_original(cell_box(r, c, cell, cell)), height, width))
                    panel.append(int(number > 0))
        return TokenRegions(boxes=boxes, panel=panel, panels=("image", "crops") if len(views) > 1 else ("image",))
