"""Real-size configurations of the supported families, for speed measurements with random weights.

Speed does not depend on weight values once the number of generated tokens is fixed, so a profiler
can build these architectures without downloading anything. The numbers are transcribed from the
checkpoints' published config.json files (the fields that shape compute and memory); `build_config`
turns one into a transformers config and `tests/test_archs.py` checks the parameter counts.
"""

from __future__ import annotations

from typing import Any

_CLIP_L_336 = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
}
_LLAVA_15 = {
    "model_type": "llava",
    "image_token_id": 32000,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "vision_config": {"model_type": "clip_vision_model", **_CLIP_L_336},
}
_NEXT = {
    "model_type": "llava_next",
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    "image_token_id": 32000,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
    "vision_config": {"model_type": "clip_vision_model", **_CLIP_L_336},
}
_VICUNA = {"model_type": "llama", "vocab_size": 32064, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
_QWEN25_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "hidden_act": "silu",
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
}
_QWEN_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
             "vision_end_token_id": 151653}

_LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32}
_LLAMA_13B = {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
              "num_key_value_heads": 40}

ARCHS: dict[str, dict[str, Any]] = {
    "llava-1.5-7b": {**_LLAVA_15, "text_config": {**_VICUNA, **_LLAMA_7B}},
    "llava-1.5-13b": {**_LLAVA_15, "text_config": {**_VICUNA, **_LLAMA_13B}},
    "llava-v1.6-vicuna-7b": {**_NEXT, "text_config": {**_VICUNA, **_LLAMA_7B}},
    "llava-v1.6-vicuna-13b": {**_NEXT, "text_config": {**_VICUNA, **_LLAMA_13B}},
    "qwen2.5-vl-3b": {
        "model_type": "qwen2_5_vl", **_QWEN_IDS, "tie_word_embeddings": True,
        "vision_config": {**_QWEN25_VISION, "out_hidden_size": 2048},
        "text_config": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                        "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936,
                        "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                            "mrope_section": [16, 24, 24]}},
    },
    "qwen2.5-vl-7b": {
        "model_type": "qwen2_5_vl", **_QWEN_IDS, "tie_word_embeddings": False,
        "vision_config": {**_QWEN25_VISION, "out_hidden_size": 3584},
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                        "max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                            "mrope_section": [16, 24, 24]}},
    },
    "qwen3-vl-8b": {
        "model_type": "qwen3_vl", **_QWEN_IDS, "tie_word_embeddings": False,
        "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                          "hidden_act": "gelu_pytorch_tanh", "patch_size": 16, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "out_hidden_size": 4096, "num_position_embeddings": 2304,
                          "deepstack_visual_indexes": [8, 16, 24]},
        "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                        "vocab_size": 151936, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                            "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
    },
}

# Qwen/Qwen3.5-9B (the published Qwen3.5 size nearest 8B): Qwen3-VL's ViT without deepstack, and 32 LLM layers
# in 8 blocks of 3 Gated DeltaNet (linear-attention) layers + 1 gated full-attention layer. The checkpoint's
# multi-token-prediction head (mtp.*, ~0.24B) is not built by transformers, so it is not counted.
_QWEN35_IDS = {"image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
               "vision_end_token_id": 248054}
ARCHS["qwen3.5-9b"] = {
    "model_type": "qwen3_5", **_QWEN35_IDS, "tie_word_embeddings": False,
    "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                      "hidden_act": "gelu_pytorch_tanh", "patch_size": 16, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "out_hidden_size": 4096, "num_position_embeddings": 2304},
    "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
                    "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 248320,
                    "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
                    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                    "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
                                        "mrope_interleaved": True, "partial_rotary_factor": 0.25}},
}
ARCHS["qwen3.5-9b"]["text_config"]["layer_types"] *= 8
# google/gemma-3-12b-it: SigLIP-So400m at 896 px (64 x 64 patches, pooled to 256 soft tokens), Gemma 3 12B LLM
# (5 sliding-window layers to 1 global, linear RoPE scaling x8 on the global ones).
_GEMMA3_VISION = {
    "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "image_size": 896, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "vision_use_head": False,
}
_GEMMA3_12B_TEXT = {
    "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 256, "query_pre_attn_scalar": 256, "vocab_size": 262208,
    "max_position_embeddings": 131072, "sliding_window": 1024, "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
}
ARCHS["gemma-3-12b"] = {
    "model_type": "gemma3", "mm_tokens_per_image": 256, "boi_token_index": 255999, "eoi_token_index": 256000,
    "image_token_index": 262144, "vision_config": _GEMMA3_VISION, "text_config": _GEMMA3_12B_TEXT,
}
# llava-hf/llava-onevision-qwen2-7b-ov-hf, as transformers' conversion script builds it: SigLIP-so400m/384
# without its last layer and head, Qwen2-7B-Instruct with the vocabulary grown by <image> and <video> and
# padded to a multiple of 64, and the image processor's 36 any-resolution grids (384 to 2304 px a side).
_ONEVISION_VISION = {
    "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 26,
    "num_attention_heads": 16, "image_size": 384, "patch_size": 14, "vision_use_head": False,
}
_ONEVISION = {
    "model_type": "llava_onevision", "image_token_index": 151646, "video_token_index": 151647,
    "vision_feature_layer": -1, "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9",
    "image_grid_pinpoints": [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)],
    "projector_hidden_act": "gelu", "tie_word_embeddings": False, "vision_config": _ONEVISION_VISION,
}
_QWEN2_7B = {
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152128, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
}
ARCHS["llava-onevision-qwen2-7b"] = {**_ONEVISION, "text_config": _QWEN2_7B}

# Not a published model: LLaVA-1.5-7B's widths (CLIP-L/336 vision, 7B LLM, full vocabulary) with 2 + 2
# layers, so a profile runs in under a minute on 2 CPU cores. The vision tower then costs ~6% of the
# full prefill FLOPs, a little more than in the real model (24 : 32 layers, ~4.5%), so the speedup
# it shows errs low rather than high.
ARCHS["cpu-small"] = {
    **_LLAVA_15,
    "vision_config": {**_LLAVA_15["vision_config"], "num_hidden_layers": 2},
    "text_config": {**_VICUNA, **_LLAMA_7B, "num_hidden_layers": 2},
}
# Not a published model: Gemma 3 12B's widths (896-px SigLIP, 12B LLM, full vocabulary) with 2 + 2 layers, one
# sliding-window and one global, so a profile fits 24 GiB and a few minutes on 2 CPU cores.
ARCHS["cpu-small-gemma3"] = {
    **ARCHS["gemma-3-12b"],
    "vision_config": {**_GEMMA3_VISION, "num_hidden_layers": 2},
    "text_config": {**_GEMMA3_12B_TEXT, "num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"]},
}

# Not a published model: Qwen3.5-9B's widths and vocabulary with 2 ViT blocks and 2 LLM layers, one Gated
# DeltaNet and one full-attention (the real model's 3:1 mix cannot be kept at 2), for a CPU profile of the family.
ARCHS["cpu-small-qwen3.5"] = {
    **ARCHS["qwen3.5-9b"],
    "vision_config": {**ARCHS["qwen3.5-9b"]["vision_config"], "depth": 2},
    "text_config": {**ARCHS["qwen3.5-9b"]["text_config"], "num_hidden_layers": 2,
                    "layer_types": ["linear_attention", "full_attention"]},
}
# Not published models: Qwen2.5-VL-7B's and Qwen3-VL-8B's widths and vocabularies with 2 ViT blocks (Qwen2.5-VL: one
# windowed and one full-attention; Qwen3-VL: both feeding deepstack) and 2 LLM layers, for CPU profiles of the video
# families (`mmtok profile --video-frames`).
ARCHS["cpu-small-qwen2.5"] = {
    **ARCHS["qwen2.5-vl-7b"],
    "vision_config": {**ARCHS["qwen2.5-vl-7b"]["vision_config"], "depth": 2, "fullatt_block_indexes": [1]},
    "text_config": {**ARCHS["qwen2.5-vl-7b"]["text_config"], "num_hidden_layers": 2},
}
ARCHS["cpu-small-qwen3-vl"] = {
    **ARCHS["qwen3-vl-8b"],
    "vision_config": {**ARCHS["qwen3-vl-8b"]["vision_config"], "depth": 2, "deepstack_visual_indexes": [0, 1]},
    "text_config": {**ARCHS["qwen3-vl-8b"]["text_config"], "num_hidden_layers": 2},
}
# InternVL3-8B in the hf format (OpenGVLab/InternVL3-8B-hf): InternViT-300M-448px-V2.5 + Qwen2.5-7B (its
# vocabulary trimmed to 151674 with InternVL's specials), pixel shuffle 0.5, LayerNorm + MLP projector.
_INTERNVL3 = {
    "model_type": "internvl", "image_token_id": 151667, "image_seq_length": 256, "downsample_ratio": 0.5,
    "projector_hidden_act": "gelu", "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
    "tie_word_embeddings": False,
    "vision_config": {"model_type": "internvl_vision", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 448, "patch_size": 14,
                      "attention_bias": True, "use_qk_norm": False, "norm_type": "layer_norm",
                      "layer_norm_eps": 1e-6, "use_mean_pooling": True, "layer_scale_init_value": 0.1,
                      "hidden_act": "gelu"},
}
ARCHS["internvl3-8b"] = {
    **_INTERNVL3,
    "text_config": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 151674,
                    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
}
# Not a published model: InternVL3-8B's widths and vocabulary with 2 vision and 2 LLM layers (as cpu-small).
ARCHS["cpu-small-internvl"] = {
    **_INTERNVL3,
    "vision_config": {**_INTERNVL3["vision_config"], "num_hidden_layers": 2},
    "text_config": {**ARCHS["internvl3-8b"]["text_config"], "num_hidden_layers": 2},
}


# Not a published model: LLaVA-OneVision-7B's widths (SigLIP vision, Qwen2-7B LLM, full vocabulary) with 2 + 2
# layers, for `mmtok profile` on a CPU (as cpu-small is for LLaVA-1.5).
ARCHS["cpu-small-onevision"] = {
    **_ONEVISION,
    "vision_config": {**_ONEVISION_VISION, "num_hidden_layers": 2},
    "text_config": {**_QWEN2_7B, "num_hidden_layers": 2},
}


def build_config(name: str) -> Any:
    """The transformers config of a real-size architecture in `ARCHS` (random weights: build the model from it)."""
    import copy

    from transformers import AutoConfig

    if name not in ARCHS:
        raise KeyError(f"unknown architecture '{name}'; known: {', '.join(ARCHS)}")
    spec = copy.deepcopy(ARCHS[name])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def random_model(model_class: type, config: Any, *, device: Any, dtype: Any) -> Any:
    """`model_class(config)` with random weights, built directly on `device` in `dtype`, in eval mode.

    transformers' own initialisation is skipped (it takes ~10 s per billion parameters on a CPU);
    one uniform fill per tensor is enough for timing, and keeps the values well away from NaN and
    denormals (which would slow CPU math down). Norm weights are 1 and biases 0, as after a real init.
    """
    import torch
    from transformers.initialization import no_init_weights

    config._attn_implementation = "sdpa"  # what from_pretrained picks on current torch; say so explicitly
    with torch.device(device), no_init_weights():
        model = model_class._from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2 or not name.endswith(("weight", "bias")):
                param.uniform_(-0.035, 0.035)  # std 0.02, the usual initializer_range
            else:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
    return model.eval()
