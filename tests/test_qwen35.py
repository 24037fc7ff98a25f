"""Qwen3.5 on tiny random checkpoints: Qwen3-VL's vision path without deepstack, and a language model
that mixes Gated DeltaNet (linear-attention) layers with full-attention layers.

The Qwen-VL tests of test_qwen_vl.py run here unchanged on a Qwen3.5 checkpoint (through this module's
`qwen` fixture): plain `model.generate` for `--method full` and k >= n, the pruned run against a hand-written
greedy loop over the language model with M-RoPE positions written out from the unpruned sequence, the
hook that counts image tokens, and batches of mixed sizes against one image at a time. The tests below add
what is particular to Qwen3.5: every decode step of a mixed batch on both layer kinds, the MoE variant,
the shared commands, and a checkpoint built without mmtok's own builder.
"""

import json

import pytest
import torch
from typer.testing import CliRunner

from mmtok_cli.cli import app

from . import test_show
from .checks import ray_and_local_records
from .conftest import noise_image
from .device import TEST_DEVICE, to_device
from .test_batch import records, write_jsonl
from .test_qwen_vl import (  # noqa: F401  (collected here, on the Qwen3.5 fixture below)
    QUESTION,
    _plain_inputs,
    _rope_positions,
    _vision_by_hand,
    test_batch_of_mixed_sizes_equals_one_by_one,
    test_language_model_sees_exactly_k_image_tokens,
    test_processor_is_assembled_when_the_full_one_cannot_load,
    test_pruned_run_equals_hand_built_reference,
    test_u_is_the_merger_input_pooled_per_group,
    test_unpruned_batch_equals_plain_generate,
    test_videos_without_torchvision_get_a_clear_error,
)

runner = CliRunner()
SIZES = [(160, 120), (90, 200), (300, 300)]


@pytest.fixture(scope="module", params=["3.5"])
def qwen(request, tmp_path_factory):
    """(version, checkpoint folder, mmtok engine, the model loaded straight through transformers)."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_qwen_vl

    path = build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen35") / "tiny-qwen3.5", version=request.param, seed=3)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    model = engine.adapter.model_class().from_pretrained(path).eval().to(TEST_DEVICE)
    return request.param, path, engine, model


def _teacher_forced_logits(model, embeds, positions, tokens):
    """Logits of the language model at the end of the prompt and after each of `tokens`, one row alone,
    unpadded, with its own cache: each fed token sits one past the largest position so far, on all axes."""
    from transformers import DynamicCache

    lm, cache = model.model.language_model, DynamicCache(config=model.config.text_config)
    hidden = lm(inputs_embeds=embeds[None], position_ids=positions[:, None], cache=cache,
                use_cache=True).last_hidden_state
    logits, nxt = [model.lm_head(hidden[0, -1])], positions.max() + 1
    for token in tokens[:-1]:
        embeds = model.get_input_embeddings()(torch.tensor([[token]], device=embeds.device))
        hidden = lm(inputs_embeds=embeds, position_ids=nxt.view(1, 1, 1).expand(3, 1, 1), cache=cache,
                    use_cache=True).last_hidden_state
        logits.append(model.lm_head(hidden[0, -1]))
        nxt = nxt + 1
    return torch.stack(logits)


def test_every_decode_step_of_a_mixed_batch_keeps_the_unpruned_positions_on_both_layer_kinds(qwen):
    """A batch of three image sizes and budgets through `generate`: each row's logits at the prefill and at
    every decode step equal that row alone, rebuilt by hand from its kept V rows at their unpruned positions.
    Both layer kinds run at every step; the positions matter (naively renumbered ones give other logits)."""
    _, path, engine, model = qwen
    layer_types = model.config.text_config.layer_types
    assert {"linear_attention", "full_attention"} <= set(layer_types)
    adapter = engine.adapter
    images = [noise_image(30 + i, size) for i, size in enumerate(SIZES)]
    questions = [QUESTION, "Is there a red circle?", "Describe the photo in detail."]
    budgets = [4, 9, 10_000]
    runs = {kind: 0 for kind in layer_types}
    hooks = [layer.register_forward_hook(lambda *_, kind=kind: runs.__setitem__(kind, runs[kind] + 1))
             for layer, kind in zip(adapter.model.model.language_model.layers, layer_types)]
    steps = 5
    try:
        with torch.no_grad():
            prepared = adapter.preprocess(images, questions)
            tokens = adapter.encode(prepared)
            text, text_mask = adapter.text_tokens(questions)
            kept = adapter.select(tokens, text, text_mask, budgets, tau_t=adapter.tau_t).indices
            out = adapter.model.generate(**adapter.generation_inputs(prepared, tokens, kept), max_new_tokens=steps,
                                         min_new_tokens=steps, do_sample=False, output_logits=True,
                                         return_dict_in_generate=True)
    finally:
        for hook in hooks:
            hook.remove()
    # one prefill and steps - 1 decode forwards, each through every layer of both kinds
    assert runs == {kind: steps * layer_types.count(kind) for kind in layer_types}
    inputs, tok = _plain_inputs(path, images, questions)
    inputs = to_device(inputs)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    with torch.no_grad():
        V = _vision_by_hand(model, inputs)[0].split((inputs["image_grid_thw"].prod(-1) // 4).tolist())
    for row, idx in enumerate(kept):
        ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        is_image = ids == image_id
        assert len(idx) == min(budgets[row], int(is_image.sum()))
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids)
            embeds[is_image] = V[row]
            keep = ~is_image
            keep[is_image.nonzero().flatten()[idx]] = True
            positions = _rope_positions(ids.tolist(), image_id, inputs["image_grid_thw"][row]).to(TEST_DEVICE)[:, keep]
            generated = out.sequences[row, -steps:].tolist()
            want = _teacher_forced_logits(model, embeds[keep], positions, generated)
            renumbered = torch.arange(int(keep.sum()), device=TEST_DEVICE).expand(3, -1)
            naive = _teacher_forced_logits(model, embeds[keep], renumbered, generated)
        got = torch.stack([step[row] for step in out.logits])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        if len(idx) < int(is_image.sum()):  # pruned: the unpruned positions differ from a plain renumbering
            assert (naive - want).abs().max() > 1e-2


def test_token_regions_hold_the_pixels_the_processor_gave_them(qwen):
    """The test every family passes in test_show.py: each token's box is where its pixels came from (1 px)."""
    for size in [(200, 120), (90, 200), (170, 120)]:
        test_show.test_every_token_region_holds_the_pixels_the_processor_gave_it({"qwen3.5": qwen[2]}, "qwen3.5", size)


def test_moe_variant_equals_plain_generate_and_prunes(tmp_path):
    """Qwen3.5 MoE has the same vision path and layer mix: the same adapter code, its own model class."""
    from mmtok_cli.engine import Engine
    from mmtok_cli.tiny import build_tiny_qwen_vl

    path = build_tiny_qwen_vl(tmp_path / "moe", version="3.5-moe", seed=5)
    engine = Engine(str(path), device=TEST_DEVICE, dtype="float32")
    assert engine.adapter.family == "qwen3.5-moe"
    model = engine.adapter.model_class().from_pretrained(path).eval().to(TEST_DEVICE)
    images = [noise_image(40, SIZES[0]), noise_image(41, SIZES[1])]
    questions = [QUESTION, "Is it red?"]
    inputs, tok = _plain_inputs(path, images, questions)
    with torch.no_grad():
        out = model.generate(**to_device(inputs), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    full = engine.run(images, questions, method="full", max_new_tokens=4)
    assert [a.output_ids[:4] for a in full] == out[:, -4:].tolist()
    pruned = engine.run(images, questions, tokens=[3, 5], max_new_tokens=4)
    assert [a.vision_kept for a in pruned] == [3, 5]
    assert [a.output_ids for a in pruned] == [engine.ask(i, q, tokens=k, max_new_tokens=4).output_ids
                                             for i, q, k in zip(images, questions, [3, 5])]


def test_agent_and_baselines(qwen):
    _, _, engine, _ = qwen
    image = noise_image(50, SIZES[1])
    n = engine.ask(image, QUESTION, method="full", max_new_tokens=1).vision_total
    full = engine.ask(image, QUESTION, method="full", max_new_tokens=4)
    assert engine.ask(image, QUESTION, tokens=n, max_new_tokens=4, agent=True).output_ids == full.output_ids
    agent = engine.ask(image, QUESTION, tokens=5, max_new_tokens=4, agent=True)
    assert agent.agent_answer is not None and agent.vision_kept == 5
    for method in ("divprune", "vision", "random"):
        answer = engine.ask(image, QUESTION, method=method, tokens=5, max_new_tokens=2)
        assert answer.vision_kept == len(answer.kept_indices[0]) == 5
        assert answer.prompt_pruned == answer.prompt_unpruned - (n - 5)


def test_eval_runs_on_it(qwen, tmp_path):
    from mmtok_cli.synth import generate

    _, path, _, _ = qwen
    generate(tmp_path / "synth", 2, seed=0)
    data = tmp_path / "synth" / "questions.jsonl"
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(data), "--model", str(path), "--device", TEST_DEVICE, "--tokens", "4",
                                 "--methods", "mmtok,divprune", "--max-new-tokens", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [(r["method"], r["tokens"]) for r in rows] == [("full", "full"), ("mmtok", 4), ("divprune", 4)]
    assert all(r["failed"] == 0 for r in rows) and rows[1]["mean_kept"] == 4


def test_batch_on_ray_equals_the_local_run(qwen, tmp_path):
    """Mixed sizes and per-line budgets (one of them k >= n) through one Ray worker (most of the time: Ray's start)."""
    pytest.importorskip("ray.data")
    _, path, _, _ = qwen
    for i, size in enumerate(SIZES):
        noise_image(60 + i, size).save(tmp_path / f"img{i}.png")
    lines = [{"id": f"q{i}", "image": f"img{i}.png", "question": QUESTION, "tokens": k}
             for i, k in enumerate([3, 7, 10_000])]
    ray_rows, local_rows = ray_and_local_records(write_jsonl(tmp_path / "q.jsonl", lines), path, batch_size=3)
    assert ray_rows == local_rows
    assert [(r["id"], r["error"]) for r in local_rows] == [("q0", None), ("q1", None), ("q2", None)]
    kept, total = ([r["vision_tokens"][key] for r in local_rows] for key in ("kept", "total"))
    assert kept == [3, 7, total[2]] and total[2] > 7


def _independent_checkpoint(path):
    """A Qwen3.5 checkpoint made with transformers' and tokenizers' classes only (nothing of mmtok's tiny.py),
    on the small config of transformers' own Qwen3.5 tests (tests/models/qwen3_5/test_modeling_qwen3_5.py:
    full-attention layer first, then Gated DeltaNet; merge size 1), its rotary made to span all (t, h, w) axes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2VLImageProcessorPil,
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
    )

    specials = ["<|endoftext|>", "<|im_end|>", "<pad>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                "<|vision_end|>", "<|im_start|>", "[UNK]"]
    words = "user assistant what colour is the cat on sofa ? red circle describe photo in detail it".split()
    words += [f"w{i}" for i in range(99 - len(specials) - len(words))]  # every id the model can emit decodes
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<pad>",
                                        unk_token="[UNK]")
    text = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, "hidden_act": "silu", "head_dim": 8,
            "hidden_size": 32, "vocab_size": 99, "intermediate_size": 37, "max_position_embeddings": 512,
            "num_attention_heads": 4, "num_hidden_layers": 2, "layer_types": ["full_attention", "linear_attention"],
            "num_key_value_heads": 2, "initializer_range": 0.2, "linear_conv_kernel_dim": 2,
            "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 4,
            "linear_num_value_heads": 8,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                "mrope_interleaved": True, "partial_rotary_factor": 1.0}}
    vision = {"depth": 2, "hidden_act": "gelu_pytorch_tanh", "intermediate_size": 32, "out_hidden_size": 32,
              "hidden_size": 32, "num_heads": 4, "patch_size": 16, "spatial_merge_size": 1, "temporal_patch_size": 2,
              "num_position_embeddings": 16}
    config = Qwen3_5Config(text_config=text, vision_config=vision, image_token_id=3, video_token_id=4,
                           vision_start_token_id=5, vision_end_token_id=6, tie_word_embeddings=True)
    torch.manual_seed(11)
    Qwen3_5ForConditionalGeneration(config).save_pretrained(path)
    GenerationConfig(eos_token_id=1, pad_token_id=2).save_pretrained(path)
    Qwen2VLImageProcessorPil(patch_size=16, merge_size=1, temporal_patch_size=2,
                             size={"shortest_edge": 16 * 16 * 4, "longest_edge": 16 * 16 * 40}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ p['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return path


def test_ask_batch_and_show_on_a_checkpoint_built_without_mmtok(tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3_5ForConditionalGeneration

    path = _independent_checkpoint(tmp_path / "independent")
    sizes = [(96, 64), (48, 112), (300, 300)]  # 24, 21 and (capped) 36 tokens
    for i, size in enumerate(sizes):
        noise_image(70 + i, size).save(tmp_path / f"img{i}.png")
    common = ["--model", str(path), "--device", TEST_DEVICE, "--dtype", "float32", "--max-new-tokens", "4"]

    # ask, keeping every token: exactly plain `generate` on inputs made from the image processor and tokenizer
    ip, tok = AutoImageProcessor.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pixels = ip(images=[noise_image(70, sizes[0])], return_tensors="pt")
    n = int(pixels["image_grid_thw"][0].prod())  # merge size 1: one token per patch
    ids = tok(f"<|im_start|>user\n<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>{QUESTION}<|im_end|>\n"
              "<|im_start|>assistant\n", return_tensors="pt")["input_ids"]
    model = Qwen3_5ForConditionalGeneration.from_pretrained(path).eval().to(TEST_DEVICE)
    pixels, ids = to_device(pixels), ids.to(TEST_DEVICE)
    with torch.no_grad():
        plain = model.generate(**pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                               mm_token_type_ids=(ids == 3).int(), max_new_tokens=4, do_sample=False)
    full = runner.invoke(app, ["ask", str(tmp_path / "img0.png"), QUESTION, "--tokens", str(n), "--json", *common])
    assert full.exit_code == 0, full.stderr
    record = json.loads(full.stdout)
    assert record["family"] == "qwen3.5" and record["vision_tokens"] == {**record["vision_tokens"], "kept": n}
    answer = tok.decode(plain[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert record["answer"] == answer and answer.count("w") >= 2  # words w0, w1, ...: the answer is not empty
    pruned = runner.invoke(app, ["ask", str(tmp_path / "img0.png"), QUESTION, "--tokens", "5", "--json", *common])
    assert pruned.exit_code == 0 and json.loads(pruned.stdout)["vision_tokens"]["kept"] == 5

    # batch: mixed sizes and per-line budgets in one batch, each line as asked alone
    lines = [{"id": f"q{i}", "image": f"img{i}.png", "question": QUESTION, "tokens": k}
             for i, k in enumerate([3, 8, 10_000])]
    batch = runner.invoke(app, ["batch", str(write_jsonl(tmp_path / "q.jsonl", lines)), "--batch-size", "3", *common])
    assert batch.exit_code == 0, batch.stderr
    got = records(batch.stdout)
    assert len({r["vision_tokens"]["total"] for r in got}) == 3
    for line, row in zip(lines, got):
        alone = runner.invoke(app, ["ask", str(tmp_path / line["image"]), QUESTION, "--tokens", str(line["tokens"]),
                                    "--json", *common])
        single = json.loads(alone.stdout)
        assert (row["answer"], row["vision_tokens"]["kept"]) == (single["answer"], single["vision_tokens"]["kept"])
        assert row["vision_tokens"]["kept"] == min(line["tokens"], row["vision_tokens"]["total"])

    # show: a picture of the kept regions
    out = tmp_path / "kept.png"
    shown = runner.invoke(app, ["show", str(tmp_path / "img1.png"), QUESTION, "--tokens", "6", "--out", str(out),
                                *common])
    assert shown.exit_code == 0, shown.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
