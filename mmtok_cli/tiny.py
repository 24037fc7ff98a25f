"""Tiny random-weight checkpoints built offline, for tests and smoke runs.

The hub is unreachable from our machines, so tests cannot download a model. Instead we build a
real checkpoint of each family from configs -- vision tower, projector, language model, a tokenizer
trained here with the `tokenizers` library, the family's real processor class -- save it with
`save_pretrained`, and load it back through the same path a user's checkpoint takes.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

# Words the tiny tokenizer learns; chosen to cover the sample questions and the stop-word list.
_CORPUS = """
what is in this image ? describe the photo in detail . is there a red circle in the picture ?
how many cats are on the sofa ? where is the dog sitting ? which colour is the car ?
an astronaut in a white suit stands next to a flag . a cup of coffee on a wooden table .
a cat with green eyes looks at the camera . a rocket launches into a blue sky .
a blue square and a green triangle on a grey background . yes no one two three four five
answer the question using a single word or phrase . answer with the option's letter from the
given choices directly . the quick brown fox jumps over the lazy dog near the river bank .
who , when , why , they , he , she , we , you , i , it , be , been , being , have , has , had ,
do , does , did , and , or , but , so , if , then , to , for , with , by , from , at , into ,
onto , upon , was , were , are , shape colour color size left right top bottom middle small large
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}"
    "{% endfor %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def qwen_chat_template(
    system: str | None, image: str = "<|vision_start|><|image_pad|><|vision_end|>",
    video: str | None = "<|vision_start|><|video_pad|><|vision_end|>",
) -> str:
    """Qwen-VL's conversation format for images and videos (the real templates also handle tools).

    Qwen2.5-VL opens with a default system turn ("You are a helpful assistant."); Qwen3-VL has none.
    `image` is what an image part becomes (InternVL3, whose LLM is a Qwen2.5, writes "<IMG_CONTEXT>\\n"), `video`
    what a video part becomes (None: the template has no videos).
    """
    opening = (
        "{% if loop.first and message['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + system + "<|im_end|>\\n' }}{% endif %}"
        if system
        else ""
    )
    return (
        "{% for message in messages %}" + opening + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image + "' }}"
        + ("" if video is None else "{% elif part['type'] == 'video' %}{{ '" + video + "' }}")
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


GEMMA3_TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")
GEMMA3_IMAGE_TOKENS = {
    "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
}
# Gemma 3's conversation format for images (the real template also folds a system turn into the first user turn).
# It starts with BOS, as the real one does, so the prompt is tokenized without adding another (models/gemma3.py).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def build_tokenizer(vocab_size: int = 600, *, qwen: bool = False, gemma: bool = False, corpus: str = _CORPUS,
                    extra_specials: dict[str, str] | None = None):
    """A metaspace BPE tokenizer trained on `corpus` (a small built-in one by default).

    Llama-style specials by default; `qwen=True` gives the Qwen-VL chat and vision specials
    (`<|im_start|>`, `<|vision_start|>`, `<|image_pad|>`, ...) and no BOS token, as Qwen has none;
    `gemma=True` gives Gemma 3's (`<bos>`, `<start_of_turn>`, `<start_of_image>`, `<image_soft_token>`, ...),
    with the image specials named as `Gemma3Processor` reads them (`boi_token`, `eoi_token`, `image_token`).
    `extra_specials` adds named special tokens (attribute name -> token, e.g. InternVL's
    `context_image_token` -> `<IMG_CONTEXT>`), readable as `tokenizer.<name>` and `tokenizer.<name>_id`.
    """
    extra = dict(extra_specials or {})
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if qwen:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list(QWEN_VISION_TOKENS)
    elif gemma:  # Gemma's order: pad 0, eos 1, bos 2, unk 3
        specials = ["<pad>", "<eos>", "<bos>", "<unk>", *GEMMA3_TURN_TOKENS, *GEMMA3_IMAGE_TOKENS.values()]
    else:
        specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    specials += [t for t in extra.values() if t not in specials]
    tok = Tokenizer(models.BPE(unk_token="<unk>" if gemma else specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.split("\n") * 4, trainer=trainer)
    if qwen:
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="<|endoftext|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", **extra},
        )
    if gemma:
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
            extra_special_tokens=GEMMA3_IMAGE_TOKENS, add_bos_token=True,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", **extra},
        add_bos_token=True,
    )


def _clip_and_llama(tokenizer, image_size: int, patch_size: int, vision_hidden: int, text_hidden: int, layers: int):
    """Tiny CLIP vision tower and Llama LLM configs, the LLaVA families' pair."""
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=layers + 1,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Larger than the usual 0.02 so that random outputs depend visibly on the input.
        initializer_range=0.2,
    )
    return vision, text


def random_model(model_class: type, config, tokenizer, seed: int):
    """A seeded random-weight model whose generation stops at the tokenizer's EOS."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_llava(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 112,
    patch_size: int = 14,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    layers: int = 2,
    pad_to_square: bool = False,
    chat_template: bool = True,
    feature_layer: int | list[int] = -2,
    select_strategy: str = "default",
) -> Path:
    """Save a random-weight `LlavaForConditionalGeneration` checkpoint with its processor to `path`.

    Laid out like `llava-hf/llava-1.5-7b-hf` (CLIP vision tower, penultimate-layer features with
    CLS dropped, 2-layer MLP projector, Llama LLM), only tiny: (image_size/patch_size)^2 tokens.
    `pad_to_square` selects the original LLaVA preprocessing (LlavaImageProcessor with do_pad);
    `chat_template=False` saves a checkpoint without one, as some older conversions are.
    `feature_layer` / `select_strategy` set the config's `vision_feature_layer` (one layer or a list
    to concatenate) and `vision_feature_select_strategy` ("default" drops CLS, "full" keeps it).
    """
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessorPil,
        LlavaProcessor,
    )

    path = Path(path)
    tokenizer = build_tokenizer()
    vision, text = _clip_and_llama(tokenizer, image_size, patch_size, vision_hidden, text_hidden, layers)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=select_strategy,
        projector_hidden_act="gelu",
    )
    model = random_model(LlavaForConditionalGeneration, config, tokenizer, seed)
    image_processor = (LlavaImageProcessorPil if pad_to_square else CLIPImageProcessorPil)(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        **({"do_pad": True} if pad_to_square else {}),
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=select_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE if chat_template else None,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_llava_next(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 14,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    layers: int = 2,
) -> Path:
    """Save a random-weight `LlavaNextForConditionalGeneration` checkpoint with its processor to `path`.

    Laid out like `llava-hf/llava-v1.6-vicuna-7b-hf` (CLIP tower, penultimate layer without CLS, MLP
    projector, Llama LLM, any-resolution crops with row-newline tokens), only tiny: each crop is
    (image_size/patch_size)^2 tokens and the crop grids are 1x2, 2x1 or 2x2 crops of `image_size`,
    so an image has a base view plus 2 or 4 crops.
    """
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    path = Path(path)
    tokenizer = build_tokenizer()
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    vision, text = _clip_and_llama(tokenizer, image_size, patch_size, vision_hidden, text_hidden, layers)
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = random_model(LlavaNextForConditionalGeneration, config, tokenizer, seed)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_grid_pinpoints=pinpoints,
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_qwen_vl(
    path: str | Path,
    *,
    version: str = "2.5",
    seed: int = 0,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    layers: int = 2,
    max_tokens: int = 64,
) -> Path:
    """Save a random-weight Qwen2.5-VL (`version="2.5"`), Qwen3-VL (`"3"`) or Qwen3.5 (`"3.5"`, `"3.5-moe"`)
    checkpoint to `path`.

    Laid out like `Qwen/Qwen2.5-VL-7B-Instruct` / `Qwen/Qwen3-VL-8B-Instruct`: dynamic-resolution
    ViT (2.5: window attention with full-attention blocks; 3: learned position grid and deepstack
    mergers feeding early LLM layers; 3.5: Qwen3-VL's ViT without deepstack, and an LLM of Gated DeltaNet
    layers plus one full-attention layer at the end -- `layers` >= 2 gives both kinds), 2x2 patch merger,
    M-RoPE language model. Tiny: images are
    resized to at most `max_tokens` merged tokens, so n differs per image size.

    The processor is saved as its parts (image processor, tokenizer, chat template), as many real
    Qwen-VL checkpoints are; the full `Qwen*VLProcessor` also wants a video processor, which needs
    torchvision, and mmtok assembles an image-only one when it cannot be built (see models/qwen_vl.py).
    """
    from transformers import Qwen2VLImageProcessorPil

    path = Path(path)
    tokenizer = build_tokenizer(qwen=True)
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in zip(
        ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"), QWEN_VISION_TOKENS
    )}
    heads = 4
    text = {
        "hidden_size": text_hidden,
        "intermediate_size": text_hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 2048,
        "bos_token_id": None,  # Qwen has none
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": 0.2,  # larger than usual so random outputs depend visibly on the input
    }
    half = text_hidden // heads // 2  # M-RoPE splits each head's rotary frequencies into (t, h, w) sections
    section = [half - 2 * (half // 3), half // 3, half // 3]
    if version == "2.5":
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        patch = 14
        vision = {
            "depth": layers + 1, "hidden_size": vision_hidden, "intermediate_size": vision_hidden * 2, "num_heads": 4,
            "out_hidden_size": text_hidden, "patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2,
            # windows of 2x2 merged tokens; the last block attends over the whole image
            "window_size": patch * 2 * 2, "fullatt_block_indexes": [layers],
        }
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
        system = "You are a helpful assistant."
    elif version == "3":
        from transformers import Qwen3VLConfig as Config
        from transformers import Qwen3VLForConditionalGeneration as Model

        patch = 16
        vision = {
            "depth": layers + 1, "hidden_size": vision_hidden, "intermediate_size": vision_hidden * 2, "num_heads": 4,
            "out_hidden_size": text_hidden, "patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "num_position_embeddings": 64, "deepstack_visual_indexes": list(range(layers)),
            "initializer_range": 0.2,  # deepstack features as large as the LLM's hidden states, so they matter
        }
        text["head_dim"] = text_hidden // heads
        text["rope_parameters"] = {
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": section, "mrope_interleaved": True,
        }
        system = None
    elif version in ("3.5", "3.5-moe"):
        if version == "3.5":
            from transformers import Qwen3_5Config as Config
            from transformers import Qwen3_5ForConditionalGeneration as Model
        else:
            from transformers import Qwen3_5MoeConfig as Config
            from transformers import Qwen3_5MoeForConditionalGeneration as Model

            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=text_hidden,
                        shared_expert_intermediate_size=text_hidden)
        patch = 16
        vision = {
            "depth": layers + 1, "hidden_size": vision_hidden, "intermediate_size": vision_hidden * 2, "num_heads": 4,
            "out_hidden_size": text_hidden, "patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "num_position_embeddings": 64,
        }
        # Hybrid LLM: Gated DeltaNet (linear attention) layers, then a full-attention one, as 3:1 in the real
        # models; rotary on a quarter of each head (partial_rotary_factor 0.25), so heads are wider here.
        text["layer_types"] = ["linear_attention"] * (layers - 1) + ["full_attention"]
        text.update(head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                    linear_value_head_dim=16, linear_conv_kernel_dim=4)
        text["rope_parameters"] = {
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True,
            "partial_rotary_factor": 0.25,
        }
        system = None
    else:
        raise ValueError(f"unknown Qwen-VL version {version!r}; use '2.5', '3', '3.5' or '3.5-moe'")
    config = Config(vision_config=vision, text_config=text, tie_word_embeddings=False, **ids)
    model = random_model(Model, config, tokenizer, seed)
    unit = patch * 2  # one merged token covers (2 patches)^2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": 4 * unit * unit, "longest_edge": max_tokens * unit * unit},
    )
    model.save_pretrained(path)
    image_processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").write_text(qwen_chat_template(system))
    save_qwen_video_processor(path, version, patch=patch, max_tokens=max_tokens,
                              mean=list(image_processor.image_mean), std=list(image_processor.image_std))
    return path


def save_qwen_video_processor(path: Path, version: str, *, patch: int, max_tokens: int | None = None,
                              mean: list[float] | None = None, std: list[float] | None = None) -> None:
    """The video processor's config, written as JSON (building the class needs torchvision, which the default
    install lacks): frames resized like the images (`max_tokens` merged tokens per frame at most; None: the class's
    real sizes), 2 frames per temporal grid. Qwen2.5-VL's takes every frame it is given; Qwen3-VL's (and Qwen3.5's)
    samples 2 per second by default, as the real ones do."""
    unit = patch * 2
    config: dict = {
        "video_processor_type": "Qwen2VLVideoProcessor" if version == "2.5" else "Qwen3VLVideoProcessor",
        "patch_size": patch, "temporal_patch_size": 2, "merge_size": 2, "cap_pixels_per_frame": False,
        **({} if mean is None else {"image_mean": mean, "image_std": std}),
    }
    if max_tokens is not None:
        config["size"] = {"shortest_edge": 4 * unit * unit, "longest_edge": max_tokens * unit * unit}
    if version != "2.5":
        config.update(fps=2, do_sample_frames=True, min_frames=4, max_frames=768)
    (path / "video_preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_tiny_gemma3(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 112,
    patch_size: int = 14,
    tokens_per_image: int = 16,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    layers: int = 2,
    pan_and_scan: bool = False,
) -> Path:
    """Save a random-weight `Gemma3ForConditionalGeneration` checkpoint with its `Gemma3Processor` to `path`.

    Laid out like `google/gemma-3-12b-it` (SigLIP tower, average-pooled to a fixed number of soft tokens per
    image, RMS norm and a linear projection; Gemma 3 LLM with sliding-window and global layers, the image
    block attending bidirectionally), only tiny: `tokens_per_image` soft tokens (4 x 4 pooled from 8 x 8
    patches). Pan-and-scan crops need only 32 px here; `pan_and_scan=True` writes `do_pan_and_scan` into
    the image processor's config, which mmtok honours (transformers' processor itself needs it per call).
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    path = Path(path)
    tokenizer = build_tokenizer(gemma=True)
    vision = SiglipVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_hidden_layers=layers + 1,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size, vision_use_head=False,
    )
    heads = 4
    text = Gemma3TextConfig(
        hidden_size=text_hidden, intermediate_size=text_hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=2, head_dim=text_hidden // heads,
        query_pre_attn_scalar=text_hidden // heads, vocab_size=len(tokenizer), max_position_embeddings=1024,
        # a window shorter than a prompt, and both kinds of layer, so both attention masks matter
        sliding_window=24, layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(layers)],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # larger than usual so random outputs depend visibly on the input
    )
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in GEMMA3_IMAGE_TOKENS.items()}
    config = Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"],
        initializer_range=0.2,
        # untied (the real ones tie): a random tied head mostly repeats the last prompt token, whatever the image
        tie_word_embeddings=False,
    )
    model = random_model(Gemma3ForConditionalGeneration, config, tokenizer, seed)
    with torch.no_grad():  # transformers starts the projection at zero, which would make every soft token 0
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=config.initializer_range)
    # the instruction-tuned checkpoints stop at <end_of_turn> as well as <eos>
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        do_pan_and_scan=pan_and_scan or None, pan_and_scan_min_crop_size=32, pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens_per_image,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


INTERNVL_TOKENS = {
    "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
"""InternVL's image specials, as its tokenizer names them (InternVLProcessor reads them by these names)."""


def build_tiny_internvl(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 7,
    max_tiles: int = 4,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    layers: int = 2,
) -> Path:
    """Save a random-weight `InternVLForConditionalGeneration` checkpoint with its processor's parts to `path`.

    Laid out like `OpenGVLab/InternVL3-8B-hf` (InternViT with a CLS token, last-layer features without
    CLS, 0.5 pixel shuffle, LayerNorm + MLP projector, Qwen2 LLM, GotOcr2 tiles of `image_size` plus a
    thumbnail), only tiny: each tile is (image_size / patch_size / 2)^2 tokens (16 by default) and an image
    is cut into at most `max_tiles` tiles, so it has 1 view, or 2 to `max_tiles` tiles plus the thumbnail.

    Saved as parts (image processor, tokenizer, chat template, processor_config.json with
    `image_seq_length`), as the real checkpoints are; their video processor needs torchvision, and mmtok
    assembles an image-only processor where the full one cannot load (models/processors.py).
    """
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    path = Path(path)
    tokenizer = build_tokenizer(qwen=True, extra_specials=INTERNVL_TOKENS)
    ratio = 0.5
    per_tile = int((image_size // patch_size * ratio) ** 2)
    vision = {
        "hidden_size": vision_hidden, "intermediate_size": vision_hidden * 2, "num_hidden_layers": layers + 1,
        "num_attention_heads": 4, "image_size": image_size, "patch_size": patch_size, "attention_bias": True,
        "initializer_range": 0.2,  # the real init (1e-10) would leave random tiles nearly identical
    }
    text = {
        "model_type": "qwen2", "hidden_size": text_hidden, "intermediate_size": text_hidden * 2,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": len(tokenizer), "max_position_embeddings": 1024, "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": 0.2,  # larger than usual so random outputs depend visibly on the input
    }
    config = InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.context_image_token_id,
        image_seq_length=per_tile, downsample_ratio=ratio, tie_word_embeddings=False,
    )
    model = random_model(InternVLForConditionalGeneration, config, tokenizer, seed)
    model.save_pretrained(path)
    save_internvl_processor(path, tokenizer, tile=image_size, per_tile=per_tile, max_tiles=max_tiles)
    return path


def save_internvl_processor(path: Path, tokenizer, *, tile: int, per_tile: int, max_tiles: int = 12) -> None:
    """InternVL's processor as the hf checkpoints ship it: GotOcr2 image processor (tiles of `tile` px, ImageNet
    mean/std; InternVLProcessor switches tiling on), tokenizer, chat template, processor_config.json."""
    from transformers import GotOcr2ImageProcessorPil

    GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile}, max_patches=max_tiles,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").write_text(qwen_chat_template(None, image="<IMG_CONTEXT>\\n", video=None))
    (path / "processor_config.json").write_text(
        json.dumps({"image_seq_length": per_tile, "processor_class": "InternVLProcessor"}, indent=2) + "\n"
    )


ONEVISION_PLACEHOLDERS = {"image_token": "<image>", "video_token": "<video>"}
"""LLaVA-OneVision's image and video placeholders on its Qwen2 tokenizer, in place of Qwen-VL's."""


def build_tiny_llava_onevision(
    path: str | Path,
    *,
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 14,
    vision_hidden: int = 32,
    text_hidden: int = 64,
    layers: int = 2,
    vision_aspect_ratio: str = "anyres_max_9",
) -> Path:
    """Save a random-weight `LlavaOnevisionForConditionalGeneration` checkpoint with its processor to `path`.

    Laid out like `llava-hf/llava-onevision-qwen2-7b-ov-hf` (SigLIP tower without head, last-layer features
    of every patch, MLP projector, Qwen2 LLM, any-resolution crops with learned row newlines, Qwen chat
    format with an `<image>` placeholder), only tiny: (image_size/patch_size)^2 tokens per view and 1x2, 2x1
    or 2x2 crops, so an image has a base view plus 2 or 4 crops. The model shrinks crop grids of more than
    N views' worth of tokens (`vision_aspect_ratio` "anyres_max_N"); with N = 1 every multi-crop image is shrunk.

    The processor is saved as its parts and settings (the full `LlavaOnevisionProcessor` also wants a video
    processor, which needs torchvision); mmtok assembles an image-only one where the full one cannot load.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    path = Path(path)
    tokenizer = build_tokenizer(qwen=True, extra_specials=ONEVISION_PLACEHOLDERS)
    pinpoints = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    vision = SiglipVisionConfig(
        hidden_size=vision_hidden, intermediate_size=vision_hidden * 2, num_hidden_layers=layers + 1,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size, vision_use_head=False,
    )
    text = Qwen2Config(
        hidden_size=text_hidden, intermediate_size=text_hidden * 2, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=1024, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        initializer_range=0.2,  # larger than usual so random outputs depend visibly on the input
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
    )
    model = random_model(LlavaOnevisionForConditionalGeneration, config, tokenizer, seed)
    model.save_pretrained(path)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints
    )
    save_onevision_processor(path, image_processor, tokenizer, config)
    return path


def save_onevision_processor(path: Path, image_processor, tokenizer, config) -> None:
    """Save a LLaVA-OneVision processor as its parts and settings, as the real checkpoints' files have them."""
    image_processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").write_text(qwen_chat_template(None, image="<image>\\n", video=None))
    vision = config.vision_config
    settings = {
        "processor_class": "LlavaOnevisionProcessor", "image_token": "<image>", "video_token": "<video>",
        "num_image_tokens": (vision.image_size // vision.patch_size) ** 2,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "vision_aspect_ratio": config.vision_aspect_ratio,
    }
    (path / "processor_config.json").write_text(json.dumps(settings, indent=2))


BUILDERS = {
    "llava": build_tiny_llava,
    "llava-next": build_tiny_llava_next,
    "qwen2.5-vl": lambda path, **kw: build_tiny_qwen_vl(path, version="2.5", **kw),
    "qwen3-vl": lambda path, **kw: build_tiny_qwen_vl(path, version="3", **kw),
    "qwen3.5": lambda path, **kw: build_tiny_qwen_vl(path, version="3.5", **kw),
    "gemma3": build_tiny_gemma3,
    "internvl": build_tiny_internvl,
    "llava-onevision": build_tiny_llava_onevision,
}


def main(argv: list[str] | None = None) -> None:
    """`python -m mmtok_cli.tiny DIR [--family F]`: write a tiny random checkpoint for offline smoke runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmtok_cli.tiny", description=main.__doc__)
    parser.add_argument("path", help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=list(BUILDERS), default="llava")
    parser.add_argument("--pad-to-square", action="store_true", help="llava only: pad-to-square preprocessing")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.disable_progress_bar()
    options = {"pad_to_square": True} if args.pad_to_square else {}
    out = BUILDERS[args.family](args.path, seed=args.seed, **options)
    print(f"tiny random-weight {args.family} checkpoint written to {out} (answers are gibberish by design)")


if __name__ == "__main__":
    main()
