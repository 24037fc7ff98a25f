"""InternVL3 (`InternVLForConditionalGeneration`, hf-format checkpoints such as OpenGVLab/InternVL3-8B-hf).

Dynamic tiling: the image processor resizes an image to the grid of square tiles whose aspect ratio is
closest to the image's (1 to `max_patches` tiles), cuts it into those tiles, and adds a thumbnail of the
whole image when there is more than one tile. Each view goes through InternViT on its own; the model
drops the CLS token, pixel-shuffles the patch grid (downsample ratio 0.5: each 2x2 block of patches
becomes one token of 4x the width) and projects it (LayerNorm + MLP). The prompt holds one
`<img>...</img>` block with `image_seq_length` `<IMG_CONTEXT>` tokens per view, views in processor order
(tiles row-major, then the thumbnail).

V is the projector output, U its input (the selected vision layer without CLS, pixel-shuffled by the
model's own `pixel_shuffle`), so the two line up one to one. `--tokens K` is the total per image, split
evenly over the tiles and the thumbnail (views.py); kept tokens stay in order and the `<IMG_CONTEXT>`
run is shortened to them. `k >= n` feeds every token unchanged: exactly the unpruned model.
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import MmtokError
from ..selection import TAU_T_LLAVA
from .base import Adapter, Prepared, VisionTokens, lay_out, placeholder_runs, view_pieces
from .llava import feed_in_order
from .regions import Box, Placement, TokenRegions, clip, size_value


class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = ("internvl",)
    # The MMTok paper reports no InternVL number; 0.02 is its value for the LLaVA family, whose
    # projector-output tokens (an MLP over a ViT, no merger averaging) InternVL's resemble.
    tau_t = TAU_T_LLAVA
    example = "OpenGVLab/InternVL3-8B-hf"
    budget = "K in total, split evenly over the tiles and the thumbnail (256 tokens per 448-px view)"
    fallback_prompt = "<|im_start|>user\n{image}\n{question}<|im_end|>\n<|im_start|>assistant\n"

    @staticmethod
    def model_class() -> type:
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration

    @staticmethod
    def processor_class() -> type:
        from transformers import InternVLProcessor

        return InternVLProcessor

    def encode(self, prepared: Prepared) -> VisionTokens:
        out = self.model.get_image_features(pixel_values=prepared.inputs["pixel_values"], return_dict=True)
        views_v = out.pooler_output  # (all views of the batch, per_view, d)
        views_u = self._projector_input(out)  # (all views of the batch, per_view, e)
        views = self._views_per_image(prepared.inputs["input_ids"], views_v.shape[1])
        if sum(views) != len(views_v):
            raise MmtokError(f"the prompt has image placeholders for {sum(views)} views but the processor made "
                             f"{len(views_v)}; is processor_config.json's image_seq_length the model's?")
        layout = prepared.layout()
        return VisionTokens(**lay_out(view_pieces(views_v, views_u, views), [len(row) for row in layout]))

    def pixel_rows(self, prepared: Prepared) -> list[int]:
        """Each image's tiles (and thumbnail), concatenated over the batch."""
        placeholders = (prepared.inputs["input_ids"] == self.image_token_id).sum(1)
        per_view = int(placeholders.sum()) // len(prepared.inputs["pixel_values"])
        return self._views_per_image(prepared.inputs["input_ids"], per_view)

    def _projector_input(self, out: BaseModelOutputWithPooling) -> torch.Tensor:
        """U: what `get_image_features` hands the projector, from its own outputs and `pixel_shuffle`."""
        config = self.model.config
        layer = config.vision_feature_layer
        # As the model: -1 is the last hidden state (after the tower's final norm), other layers come raw.
        features = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        if config.vision_feature_select_strategy == "default":
            features = features[:, 1:]  # CLS
        side = int(features.shape[1] ** 0.5)
        grid = features.reshape(features.shape[0], side, side, -1)
        shuffled = self.model.model.pixel_shuffle(grid, scale_factor=config.downsample_ratio)
        return shuffled.reshape(features.shape[0], -1, shuffled.shape[-1])

    def _views_per_image(self, input_ids: torch.Tensor, per_view: int) -> list[int]:
        """How many views (tiles + thumbnail) each image of the batch has, from its `<IMG_CONTEXT>` run (one per
        image, inside its `<img>...</img>`), rows in order."""
        runs = [run for row in placeholder_runs(input_ids, self.image_token_id) for run in row]
        if any(p % per_view for p in runs):
            raise MmtokError(f"image placeholder runs of {runs} tokens are not whole views of {per_view}; "
                             "is processor_config.json's image_seq_length the model's?")
        return [p // per_view for p in runs]

    def generation_inputs(self, prepared: Prepared, tokens: VisionTokens, kept: list[torch.Tensor] | None) -> dict:
        return feed_in_order(self, prepared, tokens, kept, listed=False)

    def token_regions(self, prepared: Prepared, row: int) -> TokenRegions:
        """Tile tokens cover their part of the tile grid the image was resized to (panel "tiles"); the thumbnail's
        cover the whole image squashed to one tile (panel "thumbnail"). An image of one tile has only the latter,
        as panel "image".

        Which patches each token holds is the model's own pixel shuffle, applied to patch coordinates.
        """
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        ip, vc = self.processor.image_processor, self.model.config.vision_config
        height, width = prepared.image_sizes[row]
        tile_h, tile_w = size_value(ip.size, "height"), size_value(ip.size, "width")
        patch_h, patch_w = vc.patch_size  # (height, width) after the config's __post_init__
        if (tile_h, tile_w) != tuple(prepared.inputs["pixel_values"].shape[-2:]):
            raise MmtokError(f"cannot map vision tokens to the image: tiles of {(tile_h, tile_w)} pixels expected, the "
                             f"processor made {tuple(prepared.inputs['pixel_values'].shape[-2:])}")
        in_view = self._token_boxes(tile_h // patch_h, tile_w // patch_w, patch_h, patch_w)
        per_view = len(in_view)
        views = self._views_per_image(prepared.inputs["input_ids"][row : row + 1], per_view)[0]
        whole = Placement(tile_w / width, tile_h / height)  # the thumbnail, or the only tile
        if views == 1:
            placements, panels, names = [whole], [0], ("image",)
        else:
            cols, rows = get_optimal_tiled_canvas((height, width), (tile_h, tile_w), ip.min_patches, ip.max_patches)
            if cols * rows + 1 != views:
                raise MmtokError(f"cannot map vision tokens to the image: {views} views, but a {cols}x{rows} tile grid "
                                 "plus a thumbnail for the processor's min_patches / max_patches")
            grid = Placement(cols * tile_w / width, rows * tile_h / height)
            placements = [grid.then(off_x=-(t % cols) * tile_w, off_y=-(t // cols) * tile_h) for t in range(cols * rows)]
            placements.append(whole)
            panels, names = [0] * (cols * rows) + [1], ("tiles", "thumbnail")
        boxes: list[Box] = []
        panel: list[int] = []
        for placement, view_panel in zip(placements, panels):
            boxes += [clip(placement.to_original(box), height, width) for box in in_view]
            panel += [view_panel] * per_view
        return TokenRegions(boxes=boxes, panel=panel, panels=names)

    def _token_boxes(self, rows: int, cols: int, patch_h: int, patch_w: int) -> list[Box]:
        """Per token of a view, in the model's order: the box of the patches it holds, in the view's pixels.

        The model's own `pixel_shuffle` on each patch's (row, col) says which patches those are."""
        r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                              indexing="ij")
        shuffled = self.model.model.pixel_shuffle(torch.stack([r, c], -1)[None], self.model.config.downsample_ratio)
        coords = shuffled.reshape(-1, shuffled.shape[-1] // 2, 2)  # per token: its patches' (row, col)
        low, high = coords.min(1).values.tolist(), coords.max(1).values.tolist()
        return [(c0 * patch_w, r0 * patch_h, (c1 + 1) * patch_w, (r1 + 1) * patch_h)
                for (r0, c0), (r1, c1) in zip(low, high)]
