"""Train the demo model: `python -m mmtok_cli.demo.train --out DIR` (about an hour on 2 CPU cores).

A small LLaVA-1.5-architecture model (CLIP vision tower, 2-layer MLP projector, Llama language model)
trained on `mmtok synth` scenes, following LLaVA's recipe in three stages:

1. **text**: the language model alone learns the world's text: a scene's caption in place of the
   image, then questions and answers about it. Only the language model trains.
2. **align**: the projector maps vision tokens into the language model's embedding space by
   captioning images ("Describe the image." -> the caption); the language model is frozen, so the
   projected tokens must speak its language. LLaVA freezes a pretrained CLIP here; no pretrained CLIP
   exists offline, so our vision tower starts from random weights and trains in this stage too.
3. **instruct**: instruction tuning on question-answer conversations about images (the first turn
   is exactly the prompt `mmtok ask` builds); everything trains.

Training scenes come from seeds >= 10**6 (`synth.make_scenes`), so any small `mmtok synth --seed`
gives scenes the model never saw. Every vision token is kept during training: the model knows
nothing about pruning, as with a real LLaVA.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from .. import synth
from ..tiny import CHAT_TEMPLATE, build_tokenizer, random_model
from . import world

IMAGE_SIZE = 192
PATCH = 16  # 12 x 12 = 144 vision tokens; one synth cell is 4 x 4 of them
TRAIN_SEED = 10**6
VALID_SEED = 999_000


CHAT_WORDS = "USER: ASSISTANT:"
"""The chat template's role words, so the tokenizer learns them whole."""


def build(seed: int = 0) -> tuple[Any, Any]:
    """A fresh (random-weight) demo model and its processor."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = build_tokenizer(400, corpus=world.corpus() + "\n" + CHAT_WORDS)
    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
        image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=128,
    )
    text = LlamaConfig(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    model = random_model(LlavaForConditionalGeneration, config, tokenizer, seed)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ),
        tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    return model, processor


class Batches:
    """Training sequences built the way inference builds them: the chat template's first turn with
    the image placeholder expanded to one token per patch, later turns as 'USER: q ASSISTANT:'."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tok = processor.tokenizer
        self.image_id = self.tok.convert_tokens_to_ids("<image>")
        self.n_image = (IMAGE_SIZE // PATCH) ** 2
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tok(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def first_prompt(self, question: str, image: bool) -> list[int]:
        if image:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = question  # stage 1 passes "USER: <caption>\n<question> ASSISTANT:" ready-made
        ids = self.tok(text)["input_ids"]
        out: list[int] = []
        for i in ids:
            out.extend([i] * self.n_image if i == self.image_id else [i])
        return out

    def sequence(
        self, conversation: list[tuple[str, str]], image: bool, prefix: str = ""
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels (-100 except on the answers and their EOS) of one conversation."""
        ids: list[int] = []
        labels: list[int] = []
        for t, (question, answer) in enumerate(conversation):
            if t == 0:
                prompt = self.first_prompt(question if image else f"USER: {prefix}\n{question} ASSISTANT:", image)
            else:
                prompt = self._ids(f"USER: {question} ASSISTANT:")
            reply = self._ids(answer) + [self.tok.eos_token_id]
            ids += prompt + reply
            labels += [-100] * len(prompt) + reply
        return ids, labels

    def collate(self, seqs: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), self.tok.pad_token_id)
        labels = torch.full((len(seqs), width), -100)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, (s, lab) in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            labels[row, : len(s)] = torch.tensor(lab)
            mask[row, : len(s)] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def pixels(self, scenes: list[synth.Scene]) -> torch.Tensor:
        images = [synth.draw(s) for s in scenes]
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def make(
        self, stage: str, scenes: list[synth.Scene], rng: random.Random, max_turns: int
    ) -> dict[str, torch.Tensor]:
        seqs = []
        for scene in scenes:
            if stage == "align":
                seqs.append(self.sequence([(rng.choice(world.DESCRIBE), world.caption(scene))], image=True))
                continue
            conv = world.turns(scene, rng, describe=0.15 if stage == "instruct" else 0.3)[:max_turns]
            if stage == "text":
                seqs.append(self.sequence(conv, image=False, prefix=world.caption(scene)))
            else:
                seqs.append(self.sequence(conv, image=True))
        batch = self.collate(seqs)
        if stage != "text":
            batch["pixel_values"] = self.pixels(scenes)
        return batch


STAGES = {
    # stage: (trainable parts, learning rate, turns per conversation)
    "text": (("language_model", "lm_head"), 1e-3, 8),
    "align": (("vision_tower", "multi_modal_projector"), 1e-3, 1),
    "instruct": (("vision_tower", "multi_modal_projector", "language_model", "lm_head"), 5e-4, 8),
}


def _trainable(model: Any, parts: tuple[str, ...]) -> list[torch.nn.Parameter]:
    params = []
    for name, p in model.named_parameters():
        p.requires_grad = any(part in name for part in parts)
        if p.requires_grad:
            params.append(p)
    return params


@torch.no_grad()
def first_token_accuracy(model: Any, batches: Batches, stage: str, n: int = 128) -> float:
    """Teacher-forced: share of held-out answers whose first token is predicted right."""
    model.eval()
    rng = random.Random(VALID_SEED)
    scenes = synth.make_scenes(n, VALID_SEED)
    batch = batches.make(stage, scenes, rng, max_turns=1)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"]
    first = (labels != -100).int().argmax(-1)  # the first answer token of each (single-turn) row
    rows = torch.arange(len(labels))
    pred = logits[rows, first - 1].argmax(-1)
    model.train()
    return float((pred == labels[rows, first]).float().mean())


def train_stage(
    model: Any, batches: Batches, stage: str, steps: int, batch_size: int, log: list, seed: int, snapshot: Path | None,
    peak_lr: float | None = None,
) -> None:
    """`snapshot`: a folder to save float32 weights to every 250 steps and at the end (for --init)."""
    parts, lr, max_turns = STAGES[stage]
    lr = peak_lr or lr
    params = _trainable(model, parts)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    rng = random.Random(seed)
    model.train()
    start, running = time.perf_counter(), None
    for step in range(steps):
        scenes = synth.make_scenes(batch_size, TRAIN_SEED + seed * 10**5 + step)
        batch = batches.make(stage, scenes, rng, max_turns)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        if (step + 1) % 50 == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            print(f"[{stage}] step {step + 1}/{steps} loss {running:.4f} {elapsed:.0f}s", flush=True)
        if snapshot and ((step + 1) % 250 == 0 or step + 1 == steps):
            model.save_pretrained(snapshot)
            batches.processor.save_pretrained(snapshot)
    acc = first_token_accuracy(model, batches, stage)
    entry = {"stage": stage, "steps": steps, "batch_size": batch_size, "lr": lr, "final_loss": round(running, 4),
             "first_token_accuracy": round(acc, 4), "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(entry), flush=True)
    log.append(entry)
    if snapshot:
        (snapshot / "training.json").write_text(json.dumps({"stages": log}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmtok_cli.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to save the trained checkpoint to")
    parser.add_argument("--steps", default="400,600,1100",
                        help="steps of the text, align and instruct stages (the shipped weights' first run)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, help="peak learning rate for every stage run (default: each stage's own)")
    parser.add_argument("--init", help="start from this checkpoint (e.g. OUT/stages/align) instead of random weights")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    log: list[dict] = []
    if args.init:
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        model = LlavaForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32)
        processor = LlavaProcessor.from_pretrained(args.init)
        earlier = Path(args.init) / "training.json"  # the stages that made the starting point
        log = json.loads(earlier.read_text())["stages"] if earlier.is_file() else []
    else:
        model, processor = build(seed=args.seed)
    batches = Batches(processor)
    _check_prompt(batches)
    steps = [int(s) for s in args.steps.split(",")]
    for stage, n in zip(STAGES, steps):
        if n:
            train_stage(model, batches, stage, n, args.batch_size, log, args.seed, Path(args.out) / "stages" / stage,
                        args.lr)
    save(model, processor, Path(args.out), log, args)


def _check_prompt(batches: Batches) -> None:
    """The first turn must be exactly what the processor gives at inference time."""
    scene = synth.make_scenes(1, VALID_SEED)[0]
    question = "Is there a red circle?"
    ours = batches.first_prompt(question, image=True)
    prompt = batches.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, tokenize=False,
    )
    theirs = batches.processor(images=[synth.draw(scene)], text=[prompt], return_tensors="pt")["input_ids"][0]
    if ours != theirs.tolist():
        raise RuntimeError("training prompt differs from the processor's; fix Batches.first_prompt")


def save(model: Any, processor: Any, out: Path, log: list[dict], args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    # Half precision halves the shipped size; loading upcasts to the dtype asked for.
    model.to(torch.float16).save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({
        "command": f"python -m mmtok_cli.demo.train --out DIR --steps {args.steps} --batch-size {args.batch_size} "
                   f"--seed {args.seed}" + (f" --init {args.init}" if args.init else "")
                   + (f" --lr {args.lr}" if args.lr else ""),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "stages": log,
    }, indent=1) + "\n")
    print(f"demo checkpoint written to {out}")


if __name__ == "__main__":
    main()
