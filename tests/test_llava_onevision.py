"""LLaVA-OneVision on tiny random checkpoints, against plain transformers and a hand-built reference.

Two tiny checkpoints: "anyres_max_9" (the real setting; the tiny crop grids never reach 9 views' worth of
tokens, so the packing only unpads) and "anyres_max_1" (every multi-crop image's grid is shrunk with
bilinear interpolation, so packed crop tokens blend neighbouring patches).
"""

import json
import math

import pytest
import torch
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import is_torchvision_available
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.models.views import split_evenly

from .checks import assert_batch_equals_one_by_one
from .conftest import noise_image
from .device import TEST_DEVICE, to_device
from .test_llava_next import NEW, QUESTION, SIDE, SIZES, _until_eos, check_pruned_against_reference

runner = CliRunner()
ASPECTS = ["anyres_max_9", "anyres_max_1"]


@pytest.fixture(scope="module", params=ASPECTS)
def onevision(request, tmp_path_factory):
    """(vision_aspect_ratio, checkpoint folder, mmtok engine, the model loaded straight through transformers)."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_llava_onevision

    aspect = request.param
    path = build_tiny_llava_onevision(tmp_path_factory.mktemp("ov") / aspect, seed=5, vision_aspect_ratio=aspect)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    return aspect, path, engine, engine.adapter.model_class().from_pretrained(path).eval().to(TEST_DEVICE)


def _plain_inputs(path, model, images, questions):
    """Processor inputs built by hand: the image processor's pixels, the chat template, and as many `<image>`
    placeholders as the model's own `get_image_features` makes features (left-padded batch)."""
    ip, tok = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pixels = ip(images=images, return_tensors="pt")
    with torch.no_grad():
        on_device = to_device({key: pixels[key] for key in ("pixel_values", "image_sizes")})
        features = model.get_image_features(on_device["pixel_values"], on_device["image_sizes"])
        counts = [len(f) for f in features.pooler_output]
    rows = []
    for n, question in zip(counts, questions):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        rows.append(tok(prompt.replace("<image>", "<image>" * n))["input_ids"])
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {**pixels, "input_ids": ids, "attention_mask": mask}, tok


def _shrink(aspect):
    """LLaVA-OneVision's anyres_max_N written out: a crop grid of more than N views' worth of tokens is
    resized bilinearly to int(side // ratio), ratio = sqrt(rows * cols / (N * tokens per view)), if ratio > 1.1."""
    limit = int(aspect.removeprefix("anyres_max_"))

    def resample(grid):
        rows, cols = grid.shape[:2]
        ratio = math.sqrt(rows * cols / (limit * SIDE * SIDE))
        if ratio <= 1.1:
            return grid
        x = grid.permute(2, 0, 1)[None]
        size = (int(rows // ratio), int(cols // ratio))
        return torch.nn.functional.interpolate(x, size, mode="bilinear")[0].permute(1, 2, 0)

    return resample


def test_processor_is_assembled_with_its_settings_when_the_full_one_cannot_load(onevision):
    """No torchvision: transformers cannot build LlavaOnevisionProcessor (video processor); mmtok assembles an
    image-only one that keeps the checkpoint's settings, and its outputs equal the hand-built inputs (whose
    placeholder counts come from the model, so a lost vision_aspect_ratio would show)."""
    aspect, path, engine, model = onevision
    processor = engine.adapter.processor
    if not is_torchvision_available():
        from transformers import AutoProcessor

        with pytest.raises(ImportError, match="[Tt]orchvision"):
            AutoProcessor.from_pretrained(path)
        assert type(processor).__name__ == "LlavaOnevisionProcessorImageOnly"
    assert (processor.num_image_tokens, processor.vision_aspect_ratio, processor.vision_feature_select_strategy) == (
        SIDE * SIDE, aspect, "full")
    images = [noise_image(1, size) for size in SIZES]
    got = engine.adapter.preprocess(images, [QUESTION] * 3).inputs
    want, _ = _plain_inputs(path, model, images, [QUESTION] * 3)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes"):
        assert torch.equal(got[key].cpu().to(want[key].dtype), want[key]), key


def test_videos_without_torchvision_get_a_clear_error(onevision):
    from mmtok_cli.errors import MmtokError

    processor = onevision[2].adapter.processor
    if not type(processor).__name__.endswith("ImageOnly"):
        pytest.skip("the full processor loaded (torchvision is installed)")
    with pytest.raises(MmtokError, match="torchvision"):
        processor(text=["<video>"], videos=[[noise_image(1)] * 2])


@pytest.mark.parametrize("method,k", [("full", 1), ("mmtok", 10_000)])
def test_unpruned_batch_equals_plain_generate(onevision, method, k):
    aspect, path, engine, model = onevision
    images = [noise_image(20 + i, size) for i, size in enumerate(SIZES)]
    questions = [QUESTION, "Is there a red circle?", "Describe the photo in detail."]
    inputs, tok = _plain_inputs(path, model, images, questions)
    with torch.no_grad():
        out = model.generate(**to_device(inputs), max_new_tokens=NEW, do_sample=False)
    width = inputs["input_ids"].shape[1]
    answers = engine.run(images, questions, method=method, tokens=k, max_new_tokens=NEW)
    for row, answer in enumerate(answers):
        assert answer.output_ids == _until_eos(out[row, width:].tolist(), tok.eos_token_id)
        assert answer.vision_kept == answer.vision_total
        assert answer.prompt_pruned == answer.prompt_unpruned == int(inputs["attention_mask"][row].sum())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("k,mode", [(7, "total"), (5, "global"), (2, "per-view")])
def test_pruned_run_equals_hand_built_reference(onevision, size, k, mode):
    """The hand-written packing (SigLIP's last layer, every patch; crops unpadded and, for anyres_max_1, shrunk;
    U shrunk the same way as V; a shrunk token's view is the one weighing most) checked against the model's
    own features, then greedy MMTok on it fed to plain `generate` via `inputs_embeds`."""
    aspect, path, engine, model = onevision
    image = noise_image(3, size)
    inputs, tok = _plain_inputs(path, model, [image], [QUESTION])
    check_pruned_against_reference(engine, model, tok, to_device(inputs), image, k, mode,
                                   select=lambda hidden: hidden[-1], resample=_shrink(aspect))


def test_resampled_crops_are_fewer_tokens_than_patches(onevision):
    """anyres_max_1 really shrinks the grid (so the test above covers blended tokens); anyres_max_9 does not."""
    aspect, _, engine, _ = onevision
    total = engine.ask(noise_image(3, SIZES[0]), QUESTION, tokens=1, max_new_tokens=1).vision_total
    unpadded = SIDE * SIDE + 6 * 8  # 160x120 in the 2x2 grid of 56-px crops: 6 of 8 token rows hold the image
    assert total == (unpadded if aspect == "anyres_max_9" else SIDE * SIDE + 3 * 4)


def test_language_model_sees_exactly_k_image_tokens_per_view_and_no_newlines(onevision):
    _, _, engine, _ = onevision
    lm = engine.adapter.model.model.language_model
    seen = []
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    images, questions, budgets = [noise_image(4, SIZES[0]), noise_image(5, SIZES[1])], ["Is it red?", QUESTION], [10, 6]
    try:
        answers = engine.run(images, questions, tokens=budgets, max_new_tokens=2)
    finally:
        handle.remove()
    prefill = seen[0]
    assert prefill.shape[1] == max(a.prompt_pruned for a in answers)
    assert not (prefill == engine.adapter.model.model.image_newline).all(-1).any()  # no row newline reached the LM
    tokens = engine.adapter.encode(engine.prepare(images, questions))
    for row, k in enumerate(budgets):
        n = tokens.counts[row]
        reached = (prefill[row][:, None] == tokens.vision[row, :n][None]).all(-1)  # (prompt, n)
        assert int(reached.any(1).sum()) == k  # k image rows in the prompt ...
        which = reached.any(0).nonzero().flatten()
        assert which.tolist() == answers[row].kept_indices[0]  # ... exactly the kept tokens
        parts = tokens.parts[row, :n]
        sizes = torch.bincount(parts).tolist()
        assert torch.bincount(parts[which], minlength=len(sizes)).tolist() == split_evenly(k, sizes)


def test_batch_of_mixed_sizes_equals_one_by_one(onevision):
    assert_batch_equals_one_by_one(onevision[2], ([6, 6, 6], [3, 10_000, 11]), sizes=SIZES)


def test_agent_and_a_baseline(onevision):
    """The agent's first pass reuses the encoded views; a baseline selects per view like MMTok."""
    _, _, engine, _ = onevision
    images = [noise_image(7, SIZES[0]), noise_image(8, SIZES[1])]
    batch = engine.run(images, [QUESTION, "Is it red?"], tokens=[6, 9], max_new_tokens=3, agent=True)
    for image, question, k, got in zip(images, [QUESTION, "Is it red?"], [6, 9], batch):
        alone = engine.ask(image, question, tokens=k, max_new_tokens=3, agent=True)
        assert (got.agent_answer, got.output_ids, got.kept_indices) == (alone.agent_answer, alone.output_ids,
                                                                        alone.kept_indices)
        assert got.vision_kept == k and got.agent_answer is not None
    divprune = engine.run(images, [QUESTION, "Is it red?"], tokens=[6, 9], method="divprune", max_new_tokens=2)
    assert [a.vision_kept for a in divprune] == [6, 9]


ONE_CHECKPOINT = pytest.mark.parametrize("onevision", ["anyres_max_1"], indirect=True)  # the shared paths: once


@ONE_CHECKPOINT
def test_eval_runs(onevision, tmp_path):
    from mmtok_cli.synth import generate

    _, path, _, _ = onevision
    generate(tmp_path / "synth", 2, seed=0)
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(tmp_path / "synth" / "questions.jsonl"), "--model", str(path),
                                 "--device", TEST_DEVICE, "--tokens", "6", "--methods", "mmtok,uniform",
                                 "--max-new-tokens", "2", "--batch-size", "4", "--json", str(report)])
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["results"]
    assert [(r["method"], r["mean_kept"], r["failed"]) for r in rows][1:] == [("mmtok", 6, 0), ("uniform", 6, 0)]


@ONE_CHECKPOINT
def test_batch_ray_equals_the_local_run(onevision, tmp_path):
    from .checks import ray_and_local_records
    from .test_batch import write_jsonl

    _, path, _, _ = onevision
    for i, size in enumerate(SIZES):
        noise_image(30 + i, size).save(tmp_path / f"img{i}.png")
    lines = [{"id": f"q{i}", "image": f"img{i % 3}.png", "question": QUESTION, "tokens": [3, 10_000, 8, 5][i]}
             for i in range(4)]
    ray_rows, local_rows = ray_and_local_records(write_jsonl(tmp_path / "q.jsonl", lines), path)
    assert ray_rows == local_rows
    assert [r["vision_tokens"]["kept"] for r in local_rows][::2] == [3, 8]


def _independent_checkpoint(folder):
    """A tiny LLaVA-OneVision built with transformers' and tokenizers' classes only (not mmtok's tiny.py): its own
    sizes (3x3 tokens per view, grids up to 3x3 views), a word-level tokenizer, the real checkpoints' chat format,
    penultimate-layer features and anyres_max_4, so the 3x3 grid is shrunk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        PreTrainedTokenizerFast,
        Qwen2Config,
        SiglipVisionConfig,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    words = "user assistant what is in the image where are colour red cat dog sofa yes no".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image>\n{% endif %}{% endfor %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
        "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    pinpoints = [[42, 84], [84, 42], [84, 84], [126, 126]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=42, patch_size=14),
        text_config=Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1, vocab_size=len(tokenizer), initializer_range=0.5),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2, vision_aspect_ratio="anyres_max_4",
    )
    torch.manual_seed(11)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    LlavaOnevisionImageProcessorPil(size={"height": 42, "width": 42}, image_grid_pinpoints=pinpoints).save_pretrained(
        folder)
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 9, "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_4",
    }))
    return folder


def test_ask_batch_and_show_on_an_independently_built_checkpoint(tmp_path):
    from mmtok_cli.engine import Engine

    from .test_batch import records, write_jsonl

    folder = _independent_checkpoint(tmp_path / "independent")
    sizes = [(150, 100), (60, 200), (126, 126)]  # a 2x2, a 2x1 and a shrunk 3x3 grid of views
    for i, size in enumerate(sizes):
        noise_image(40 + i, size).save(tmp_path / f"img{i}.png")
    common = ["--model", str(folder), "--max-new-tokens", "4", "--device", TEST_DEVICE, "--dtype", "float32"]

    asked = runner.invoke(app, ["ask", str(tmp_path / "img2.png"), "What is in the image?", "--tokens", "5", "--json",
                                *common])
    assert asked.exit_code == 0, asked.output
    record = json.loads(asked.stdout)
    assert record["family"] == "llava-onevision" and record["vision_tokens"]["kept"] == 5
    assert record["vision_tokens"]["total"] == 9 + 6 * 6  # base view + the 9x9 crop grid shrunk to 6x6

    budgets = [4, 10_000, 7]
    lines = [{"id": f"q{i}", "image": f"img{i}.png", "question": "Where is the red cat?", "tokens": k}
             for i, k in enumerate(budgets)]
    batch = runner.invoke(app, ["batch", str(write_jsonl(tmp_path / "q.jsonl", lines)), "--batch-size", "3", *common])
    assert batch.exit_code == 0, batch.output
    engine = Engine(str(folder), device=TEST_DEVICE, dtype="float32")
    for i, (k, got) in enumerate(zip(budgets, records(batch.stdout))):
        image = noise_image(40 + i, sizes[i])
        alone = engine.ask(image, "Where is the red cat?", tokens=k, max_new_tokens=4)
        assert got["answer"] == alone.answer and got["prompt_tokens"]["pruned"] == alone.prompt_pruned
        assert got["vision_tokens"]["kept"] == alone.vision_kept == min(k, alone.vision_total)
    full = engine.ask(noise_image(41, sizes[1]), "Where is the red cat?", method="full", max_new_tokens=4)
    assert records(batch.stdout)[1]["answer"] == full.answer  # k >= n is the unpruned model

    picture = tmp_path / "show.png"
    shown = runner.invoke(app, ["show", str(tmp_path / "img2.png"), "Where is the red cat?", "--tokens", "6",
                                "--out", str(picture), *common])
    assert shown.exit_code == 0, shown.output
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shown.stdout.startswith("mmtok:")
