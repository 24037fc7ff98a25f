"""Tiny random-weight checkpoints built offline, for tests and smoke runs.

The hub is unreachable from our machines, so tests cannot download a model. Instead we build a
real checkpoint of each family from configs -- vision tower, projector, language model, a tokenizer
trained here with the `tokenizers` library, the family's real processor class -- save it with
`save_pretrained`, and load it back through the same path a user's checkpoint takes.
"""

from __future__ import annotations

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


def build_tokenizer(vocab_size: int = 600):
    """A Llama-style (metaspace BPE) tokenizer trained on a small built-in corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split("\n") * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        add_bos_token=True,
    )


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
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessorPil,
        LlavaProcessor,
    )

    path = Path(path)
    tokenizer = build_tokenizer()
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
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy=select_strategy,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
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


def main(argv: list[str] | None = None) -> None:
    """`python -m mmtok_cli.tiny DIR`: write a tiny random LLaVA checkpoint for offline smoke runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mmtok_cli.tiny", description=main.__doc__)
    parser.add_argument("path", help="folder to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pad-to-square", action="store_true", help="use LLaVA's pad-to-square preprocessing")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.disable_progress_bar()
    out = build_tiny_llava(args.path, seed=args.seed, pad_to_square=args.pad_to_square)
    print(f"tiny random-weight LLaVA checkpoint written to {out} (answers are gibberish by design)")


if __name__ == "__main__":
    main()
