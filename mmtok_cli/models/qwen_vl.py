"""Qwen2.5-VL, Qwen3-VL and Qwen3.5 (`Qwen2_5_VLForConditionalGeneration`, `Qwen3VLForConditionalGeneration`,
`Qwen3_5ForConditionalGeneration`, `Qwen3_5MoeForConditionalGeneration`).

Dynamic resolution: each image has its own (t, h, w) patch grid, so n (merged tokens) varies per
image. V is the merger output, U the ViT output before the merger, mean-pooled over each merged 2x2
group so it lines up with V. The language model places tokens with 3-D M-RoPE positions; kept tokens
keep the positions they have in the unpruned sequence, and so does the text after the image: we
compute the unpruned positions with the model's own `get_rope_index`, drop the pruned rows and hand
the rest to `generate` as `position_ids`. `generate` continues every decode step from the last
position (+1), so answers are placed exactly where they would be unpruned. Qwen3-VL also injects
"deepstack" features from intermediate ViT layers into early LLM layers at the image positions; they
are pruned with the same indices. Qwen3.5 has Qwen3-VL's ViT without deepstack; its language model mixes
Gated DeltaNet (linear-attention) layers, which read no positions, with full-attention layers, which read
the M-RoPE positions we pass, so the same shortened inputs and positions serve it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..selection import TAU_T_QWEN
from ..video import is_video
from .base import (
    Adapter,
    Piece,
    Prepared,
    VisionTokens,
    compact,
    input_counts,
    kept_by_input,
    lay_out,
    per_layer,
    placeholder_stays,
)
from .regions import Placement, TokenRegions, cell_box, clip


@dataclass
class QwenVisionTokens(VisionTokens):
    deepstack: list[list[torch.Tensor]] | None = per_layer()
    """Qwen3-VL: per deepstack layer, each item's (n_i, d) features injected into the LLM (its inputs' one after
    another, like V)."""


class QwenVLAdapter(Adapter):
    """Qwen2.5-VL; `Qwen3VLAdapter` below adds deepstack."""

    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    tau_t = TAU_T_QWEN
    example = "Qwen/Qwen2.5-VL-7B-Instruct"
    budget = "K of the image's merged tokens (n grows with resolution); kept tokens keep their M-RoPE positions"
    videos = True
    fallback_prompt = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    divprune_on = "features"
    """As the MMTok authors' Qwen DivPrune baseline (Ironieser/MMTok at d1522cd): the pooled pre-merger features."""
    windowed = True
    """The ViT reorders patches into attention windows; its last hidden state comes out in that order."""

    @staticmethod
    def model_class() -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @staticmethod
    def processor_class() -> type:
        from transformers import Qwen2_5_VLProcessor

        return Qwen2_5_VLProcessor

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def encode(self, prepared: Prepared) -> QwenVisionTokens:
        inputs = prepared.inputs
        encoded = {
            "image": self._encode_kind(inputs.get("pixel_values"), inputs.get("image_grid_thw"), video=False),
            "video": self._encode_kind(inputs.get("pixel_values_videos"), inputs.get("video_grid_thw"), video=True),
        }
        layout = prepared.layout()
        pieces = [encoded[kind][0][i] for row in layout for kind, i in row]
        fields = lay_out(pieces, [len(row) for row in layout])
        deepstack = None
        layers = {kind: got[1] for kind, got in encoded.items() if got[1] is not None}
        if layers:  # per layer, each row's inputs' features one after another, like V
            depth = len(next(iter(layers.values())))
            deepstack = [[torch.cat([layers[kind][layer][i] for kind, i in row]) for row in layout]
                         for layer in range(depth)]
        return QwenVisionTokens(**fields, deepstack=deepstack)

    def _encode_kind(
        self, pixels: torch.Tensor | None, grid: torch.Tensor | None, *, video: bool
    ) -> tuple[list[Piece], list[list[torch.Tensor]] | None]:
        """The batch's images (or videos) as pieces, in batch order, and their deepstack features per layer (Qwen3-VL).
        A video's views are its temporal grids (each `temporal_patch_size` frames merged)."""
        if pixels is None:
            return [], None
        get = self.model.get_video_features if video else self.model.get_image_features
        out = get(pixels, grid, return_dict=True)
        per_input = list(out.pooler_output)
        counts = [len(v) for v in per_input]
        features = self._merged_groups(out.last_hidden_state, grid).split(counts)
        pieces = []
        for v, u, (t, _, _) in zip(per_input, features, grid.tolist()):
            views = torch.arange(t, device=v.device).repeat_interleave(len(v) // t) if video else None
            pieces.append(Piece(vision=v, features=u, views=views, video=video))
        deepstack = getattr(out, "deepstack_features", None)
        return pieces, [list(layer) for layer in deepstack] if deepstack else None

    def pixel_rows(self, prepared: Prepared) -> list[int]:
        """Each image's t * h * w patches, concatenated over the batch."""
        return prepared.inputs["image_grid_thw"].prod(-1).tolist()

    def video_pixel_rows(self, prepared: Prepared) -> list[int]:
        """Each video's t * h * w patches, concatenated over the batch."""
        return prepared.inputs["video_grid_thw"].prod(-1).tolist()

    def _merged_groups(self, hidden: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """(N, e) ViT features before the merger, mean-pooled over each merged group, in V's order."""
        vc = self.model.config.vision_config
        unit = vc.spatial_merge_size**2
        pooled = hidden.view(-1, unit, hidden.shape[-1]).mean(1)  # the merger flattens `unit` consecutive rows
        if not self.windowed:
            return pooled
        # The merger's output is put back in raster order with argsort(window_index); do the same here.
        try:
            from transformers.vision_utils import get_vision_window_index
        except ImportError:  # transformers releases before vision_utils kept it on the vision model
            window_index, _ = self.model.model.visual.get_window_index(grid)
        else:
            window_index, _ = get_vision_window_index(grid, vc.spatial_merge_size, vc.window_size, vc.patch_size)
        return pooled[torch.argsort(window_index.to(pooled.device))]

    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        assert isinstance(tokens, QwenVisionTokens)
        inputs = prepared.inputs
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        # 3-D M-RoPE positions of the unpruned sequence, from the model itself (videos: their temporal positions
        # from `second_per_grid_ts` on Qwen2.5-VL; on Qwen3-VL each temporal grid is its own run after its
        # timestamp's text).
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=attention_mask,
        )
        counts = tokens.counts
        if kept is None:
            kept = [torch.arange(n, device=input_ids.device) for n in counts]
        # Image and video placeholders are numbered together, in the order of the row's tokens (its inputs').
        placeholders = (self.image_token_id, self.model.config.video_token_id)
        stays = placeholder_stays(input_ids, attention_mask, placeholders, kept, counts)
        new_mask, (new_ids, new_positions) = compact(stays, input_ids, positions, pad=self.tokenizer.pad_token_id)
        new_positions[:, new_mask == 0] = 0  # padding positions are never read; keep them as get_rope_index does
        # Row 0: plain text positions, which the language model uses only to build its attention mask,
        # computed as `generate` computes them for the sequence it is given.
        text_positions = (new_mask.cumsum(-1) - 1).clamp(min=0) * new_mask
        return {
            "input_ids": new_ids,
            "attention_mask": new_mask,
            "position_ids": torch.cat([text_positions[None], new_positions]),
            "mm_encoder_outputs": self._encoder_outputs(prepared, tokens, kept),
        }

    def _fed(self, prepared: Prepared, tokens: QwenVisionTokens, kept: list[torch.Tensor]) -> dict[str, Any]:
        """Per kind ("image", "video"): each input's kept V rows in batch order, and per deepstack layer the same
        rows of its features."""
        fed: dict[str, dict[str, list]] = {}
        for row, (entries, pieces, sizes) in enumerate(
            zip(prepared.layout(), kept_by_input(tokens, kept), input_counts(tokens))
        ):
            start = 0
            for (kind, _), local, size in zip(entries, pieces, sizes, strict=True):
                idx = local.to(tokens.vision.device) + start
                got = fed.setdefault(kind, {"vision": [], "deepstack": []})
                got["vision"].append(tokens.vision[row, idx])
                if tokens.deepstack:
                    got["deepstack"].append([layer[row][idx] for layer in tokens.deepstack])
                start += size
        return fed

    def _encoder_outputs(self, prepared: Prepared, tokens: QwenVisionTokens, kept: list[torch.Tensor]) -> dict:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {kind: BaseModelOutputWithPooling(pooler_output=got["vision"])
                for kind, got in self._fed(prepared, tokens, kept).items()}

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Merged tokens in raster order over the resized image; each covers (merge * patch)^2 of its pixels.

        The resized size is the processor's own (its grid in `image_grid_thw` times the patch size), so the
        boxes map back to the original image by the resize factors alone.
        """
        index = prepared.image_index(row)
        height, width = prepared.image_sizes[index]
        return self._grid_regions(prepared.inputs["image_grid_thw"][index], height, width)

    def video_regions(self, prepared: Prepared, index: int) -> TokenRegions:
        """A video's tokens (the batch's video `index`) over its frames: one panel per temporal grid, named by the
        file's frames it merges; boxes in the decoded frames' pixels."""
        video = [v for row in prepared.visuals for v in row if is_video(v)][index]
        grid = prepared.inputs["video_grid_thw"][index]
        regions = self._grid_regions(grid, video.height, video.width, per_grid=True)
        step = len(video.indices) / int(grid[0])
        regions.panels = tuple(f"frame {video.indices[int(g * step)]}" for g in range(int(grid[0])))
        return regions

    def _grid_regions(self, grid: torch.Tensor, height: int, width: int, per_grid: bool = False) -> TokenRegions:
        ip, vc = self.processor.image_processor, self.model.config.vision_config
        patch = getattr(ip, "patch_size", None) or vc.patch_size
        merge = getattr(ip, "merge_size", None) or vc.spatial_merge_size
        frames, rows, cols = (int(v) for v in grid)
        placement = Placement(cols * patch / width, rows * patch / height)
        cell = merge * patch
        boxes, panel = [], []
        for t in range(frames):
            for r in range(rows // merge):
                for c in range(cols // merge):
                    boxes.append(clip(placement.to_original(cell_box(r, c, cell, cell)), height, width))
                    panel.append(t if per_grid else 0)
        return TokenRegions(boxes=boxes, panel=panel)

class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3-vl"
    model_types = ("qwen3_vl",)
    example = "Qwen/Qwen3-VL-8B-Instruct"
    fallback_prompt = (
        "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    windowed = False

    @staticmethod
    def model_class() -> type:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    @staticmethod
    def processor_class() -> type:
        from transformers import Qwen3VLProcessor

        return Qwen3VLProcessor

    def _encoder_outputs(self, prepared: Prepared, tokens: QwenVisionTokens, kept: list[torch.Tensor]) -> dict:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        # The deepstack features sit on the same positions as V, so they take the same indices.
        return {
            kind: BaseModelOutputWithDeepstackFeatures(
                pooler_output=got["vision"],
                deepstack_features=[list(layer) for layer in zip(*got["deepstack"])] if got["deepstack"] else [],
            )
            for kind, got in self._fed(prepared, tokens, kept).items()
        }


class Qwen35Adapter(QwenVLAdapter):
    """Qwen3.5: Qwen3-VL's vision path without deepstack (so V, U and the encoder outputs are Qwen2.5-VL's,
    unwindowed) and a hybrid Gated DeltaNet / full-attention language model."""

    family = "qwen3.5"
    model_types = ("qwen3_5",)
    example = "Qwen/Qwen3.5-9B"
    fallback_prompt = Qwen3VLAdapter.fallback_prompt
    windowed = False

    @staticmethod
    def model_class() -> type:
        from transformers import Qwen3_5ForConditionalGeneration

        return Qwen3_5ForConditionalGeneration

    processor_class = staticmethod(Qwen3VLAdapter.processor_class)  # transformers maps qwen3_5 to Qwen3VLProcessor


class Qwen35MoeAdapter(Qwen35Adapter):
    """Qwen3.5 MoE (e.g. 35B-A3B): the same vision path and layer mix, with mixture-of-experts MLPs."""

    family = "qwen3.5-moe"
    model_types = ("qwen3_5_moe",)
    example = "Qwen/Qwen3.5-35B-A3B"

    @staticmethod
    def model_class() -> type:
        from transformers import Qwen3_5MoeForConditionalGeneration

        return Qwen3_5MoeForConditionalGeneration
