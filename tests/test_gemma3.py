"""Gemma 3 on tiny random checkpoints, against plain transformers and hand-built references.

Two checkpoints: one as the real ones ship (no pan-and-scan: one 16-token block per image) and one whose
image processor asks for pan-and-scan (long images get 2 crops here, each its own block).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor, Gemma3ForConditionalGeneration
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.engine import Engine
from mmtok_cli.models.views import split_evenly

from . import reference
from .checks import assert_batch_equals_one_by_one, ray_and_local_records
from .conftest import noise_image
from .device import TEST_DEVICE, to_device
from .test_show import _unnormalize, ramp

QUESTION = "What colour is the cat on the sofa?"
WORDS = ["colour", "cat", "on", "sofa"]
NEW = 6
SIZES = [(160, 120), (90, 200), (120, 120)]  # with pan-and-scan: 2 crops across, 2 crops down, none
runner = CliRunner()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from mmtok_cli.tiny import build_tiny_gemma3

    root = tmp_path_factory.mktemp("gemma3")
    return {scan: build_tiny_gemma3(root / f"scan-{scan}", seed=5, pan_and_scan=scan) for scan in (False, True)}


@pytest.fixture(scope="module")
def engines(paths):
    return {scan: Engine(str(path), device=TEST_DEVICE, dtype="float32") for scan, path in paths.items()}


@pytest.fixture(scope="module")
def plain(paths):
    path = paths[False]  # same weights in both folders (same seed); only the image processor differs
    model = Gemma3ForConditionalGeneration.from_pretrained(path).eval().to(TEST_DEVICE)
    return model, AutoProcessor.from_pretrained(path)


def _inputs(processor, images, questions, scan):
    """What a user of transformers feeds Gemma 3: its own chat template with the images, tokenized."""
    conversations = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": q}]}]
                     for im, q in zip(images, questions)]
    processor.tokenizer.padding_side = "left"
    # Gemma3Processor's own defaults (no pan-and-scan, 256-px crops) apply unless the call says otherwise.
    scan_options = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 32} if scan else {}
    return to_device(processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, **scan_options}))


def _until_eos(ids, eos):
    cut = [i for i, tok in enumerate(ids) if tok in eos]
    return ids[: cut[0] + 1] if cut else ids


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("method,k", [("full", 1), ("mmtok", 10_000)])
def test_unpruned_batch_equals_plain_generate(engines, plain, scan, method, k):
    model, processor = plain
    images = [noise_image(20 + i, size) for i, size in enumerate(SIZES)]
    questions = [QUESTION, "Is there a red circle?", "Describe the photo in detail."]
    inputs = _inputs(processor, images, questions, scan)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    width, eos = inputs["input_ids"].shape[1], model.generation_config.eos_token_id
    answers = engines[scan].run(images, questions, method=method, tokens=k, max_new_tokens=NEW)
    views = [3, 3, 1] if scan else [1, 1, 1]
    for row, answer in enumerate(answers):
        assert answer.output_ids == _until_eos(out[row, width:].tolist(), eos)
        assert answer.vision_kept == answer.vision_total == 16 * views[row]
        assert answer.prompt_pruned == answer.prompt_unpruned == int(inputs["attention_mask"][row].sum())
    assert len({tuple(out[row, width:].tolist()) for row in range(3)}) > 1  # answers depend on the input


def _by_hand(model, inputs):
    """V, U and each token's view for one image, with the pooling written out: each view's 8 x 8 SigLIP grid
    average-pooled over 2 x 2 windows, row-major, views in the order of the prompt (image, then crops)."""
    hidden = model.model.vision_tower(pixel_values=inputs["pixel_values"]).last_hidden_state  # (views, 64, e)
    views, _, e = hidden.shape
    U = F.avg_pool2d(hidden.transpose(1, 2).reshape(views, e, 8, 8), 2).reshape(views, e, 16).transpose(1, 2)
    V = model.model.multi_modal_projector(hidden)
    view = torch.arange(views, device=V.device).repeat_interleave(16)
    return V.reshape(-1, V.shape[-1]), U.reshape(-1, e), view


def _shortened(model, inputs, V, kept):
    """The prompt with each image block cut to its kept tokens, as embeddings, and token_type_ids cut with it."""
    ids, types = inputs["input_ids"][0], inputs["token_type_ids"][0]
    rows = model.get_input_embeddings()(ids)
    is_image = ids == model.config.image_token_id
    rank = is_image.long().cumsum(0) - 1
    embeds, new_types = [], []
    for pos in range(len(ids)):
        if not is_image[pos]:
            embeds.append(rows[pos])
            new_types.append(int(types[pos]))
        elif int(rank[pos]) in kept:
            embeds.append(V[rank[pos]])
            new_types.append(1)
    return torch.stack(embeds)[None], torch.tensor([new_types], device=ids.device)


def _greedy(model, embeds, types, eos):
    """Greedy decoding written out (Gemma 3's `generate` takes no `inputs_embeds`): the prefill with its
    bidirectional image blocks, then one token at a time on the cache, without token_type_ids."""
    out = model(inputs_embeds=embeds, token_type_ids=types, use_cache=True)
    ids = []
    for _ in range(NEW):
        ids.append(int(out.logits[0, -1].argmax()))
        if ids[-1] in eos:
            break
        out = model(input_ids=torch.tensor([ids[-1:]], device=embeds.device), cache=out.cache, use_cache=True)
    return ids


@pytest.mark.parametrize("scan,size,k", [(False, SIZES[0], 5), (False, SIZES[1], 9), (True, SIZES[0], 7),
                                         (True, SIZES[1], 11), (True, SIZES[2], 6)])
def test_pruned_run_equals_hand_built_reference_with_shortened_token_type_ids(engines, plain, scan, size, k):
    model, processor = plain
    image = noise_image(3, size)
    inputs = _inputs(processor, [image], [QUESTION], scan)
    with torch.no_grad():
        V, U, view = _by_hand(model, inputs)
        got = model.get_image_features(inputs["pixel_values"]).pooler_output
        torch.testing.assert_close(V, got.reshape(V.shape))  # the hand-written layout is the model's
        T = model.get_input_embeddings()(torch.tensor(processor.tokenizer(
            WORDS, is_split_into_words=True, add_special_tokens=False)["input_ids"], device=TEST_DEVICE))
        members = [(view == v).nonzero().flatten() for v in range(int(view.max()) + 1)]
        shares = [k // len(members) + (i < k % len(members)) for i in range(len(members))]
        kept = sorted(int(m[j]) for m, s in zip(members, shares) for j in reference.mmtok_indices(V[m], U[m], T, s))
        short, types = _shortened(model, inputs, V, kept)
        mask = torch.ones(short.shape[:2], dtype=torch.long, device=TEST_DEVICE)
        expected = _greedy(model, short, types, model.generation_config.eos_token_id)
        bidirectional = model(inputs_embeds=short, attention_mask=mask, token_type_ids=types).logits[0, -1]
        causal = model(inputs_embeds=short, attention_mask=mask).logits[0, -1]

    engine = engines[scan]
    answer = engine.ask(image, QUESTION, tokens=k, max_new_tokens=NEW)
    assert answer.vision_total == len(V) == 16 * len(members)
    assert answer.kept_indices == [kept]
    assert torch.bincount(view[kept], minlength=len(members)).tolist() == shares  # every view keeps its share
    assert answer.output_ids == expected
    assert answer.prompt_pruned == short.shape[1] == answer.prompt_unpruned - len(V) + k

    # The kept tokens still attend to each other: the engine's inputs give the logits of the reference with
    # shortened token_type_ids, not those of a purely causal prompt.
    adapter = engine.adapter
    prepared = engine.prepare([image], [QUESTION])
    with torch.no_grad():
        gen = adapter.generation_inputs(prepared, adapter.encode(prepared), [torch.tensor(kept, device=TEST_DEVICE)])
        logits = adapter.model(**gen).logits[0, -1]
    assert gen["token_type_ids"].tolist() == types.tolist()
    torch.testing.assert_close(logits, bidirectional)
    assert not torch.allclose(logits, causal, atol=1e-3)


@pytest.mark.parametrize("scan", [False, True])
def test_language_model_sees_exactly_k_image_tokens_per_view(engines, scan):
    engine = engines[scan]
    adapter = engine.adapter
    lm = adapter.model.model.language_model
    seen = []
    handle = lm.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    images = [noise_image(4, SIZES[0]), noise_image(5, SIZES[2]), noise_image(6, SIZES[1])]
    budgets = [10, 6, 2]
    try:
        answers = engine.run(images, ["Is it red?", QUESTION, "What is here?"], tokens=budgets, max_new_tokens=2)
    finally:
        handle.remove()
    prefill = seen[0]
    assert prefill.shape[1] == max(a.prompt_pruned for a in answers)
    vt = adapter.encode(engine.prepare(images, ["q"] * 3))
    for row, (answer, k) in enumerate(zip(answers, budgets)):
        V = vt.vision[row, : answer.vision_total]
        match = (prefill[row][:, None, :] == V[None]).all(-1)  # (positions, n): which token sits where
        fed = match.any(0).nonzero().flatten().tolist()
        assert fed == answer.kept_indices[0] and len(fed) == k and match.sum() == k
        if scan and row != 1:  # 3 views: the budget split evenly, the image's own view first
            assert torch.bincount(torch.tensor(fed) // 16, minlength=3).tolist() == split_evenly(k, [16] * 3)


@pytest.mark.parametrize("scan", [False, True])
def test_batch_of_mixed_sizes_and_budgets_equals_one_by_one(engines, scan):
    assert_batch_equals_one_by_one(engines[scan], ([6, 6, 6], [3, 10_000, 11]), sizes=SIZES)


def _view_centres(engine, prepared):
    """(n, 2) mean (x, y) colour of the pixels each soft token pools, from the processor's own output."""
    ip = engine.adapter.processor.image_processor
    pixels = _unnormalize(prepared.inputs["pixel_values"], ip)[:, :2]  # (views, 2, 112, 112)
    cells = pixels.reshape(len(pixels), 2, 4, 28, 4, 28).mean((3, 5))  # 4 x 4 tokens of 28 x 28 pixels
    return cells.flatten(2).transpose(1, 2).reshape(-1, 2)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("size", [(200, 120), (90, 200), (170, 120), (120, 120)])
def test_every_token_region_holds_the_pixels_the_processor_gave_it(engines, scan, size):
    engine = engines[scan]
    width, height = size
    prepared = engine.prepare([ramp(width, height)], ["What is here?"])
    regions = engine.adapter.token_regions(prepared, 0)
    centres = _view_centres(engine, prepared)
    assert len(regions.boxes) == len(centres) == engine.adapter.encode(prepared).counts[0]
    checked = 0
    for box, (x, y) in zip(regions.boxes, centres.tolist()):
        x0, y0, x1, y1 = box
        if x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height:
            continue  # touches the border: resampling edge effects
        # pixel i holds value i and spans [i, i + 1): a region's mean value is its centre minus a half
        assert abs(x - ((x0 + x1) / 2 - 0.5)) < 1.0 and abs(y - ((y0 + y1) / 2 - 0.5)) < 1.0, (box, x, y)
        checked += 1
    assert checked >= 4
    crops = scan and width != height
    assert regions.panels == (("image", "crops") if crops else ("image",))
    assert regions.panel == [0] * 16 + [1] * (len(regions.boxes) - 16)


def test_crops_are_the_halves_of_a_long_image(engines):
    """200 x 120 is cut into two 100 x 120 crops; each token of a crop covers a 25 x 30 block of it."""
    adapter = engines[True].adapter
    assert adapter.crop_boxes(120, 200) == [(0, 0, 100, 120), (100, 0, 200, 120)]
    prepared = engines[True].prepare([Image.new("RGB", (200, 120))], ["?"])
    boxes = adapter.token_regions(prepared, 0).boxes
    assert len(boxes) == 48
    np.testing.assert_allclose(boxes[:16], [(50 * c, 30 * r, 50 * c + 50, 30 * r + 30)
                                            for r in range(4) for c in range(4)])
    np.testing.assert_allclose(boxes[32:], [(100 + 25 * c, 30 * r, 125 + 25 * c, 30 * r + 30)
                                            for r in range(4) for c in range(4)])


def test_pan_and_scan_can_be_turned_on_for_a_checkpoint_without_it(engines):
    engine = engines[False]
    long_image = noise_image(1, SIZES[0])
    assert engine.adapter.encode(engine.prepare([long_image], ["?"])).counts == [16]
    try:
        engine.adapter.pan_and_scan = True
        assert engine.adapter.encode(engine.prepare([long_image], ["?"])).counts == [48]
    finally:
        del engine.adapter.pan_and_scan  # back to the checkpoint's setting


def test_agent_runs_on_its_own_tokens_and_batches_like_one_at_a_time(engines):
    engine = engines[True]
    images = [noise_image(7, SIZES[0]), noise_image(8, SIZES[2])]
    batch = engine.run(images, [QUESTION, "Is it red?"], tokens=[6, 10], max_new_tokens=3, agent=True)
    for image, question, k, got in zip(images, [QUESTION, "Is it red?"], [6, 10], batch):
        alone = engine.ask(image, question, tokens=k, max_new_tokens=3, agent=True)
        assert (got.agent_answer, got.output_ids, got.kept_indices) == (alone.agent_answer, alone.output_ids,
                                                                        alone.kept_indices)
        assert got.vision_kept == k and got.agent_answer is not None


def test_every_baseline_keeps_k_tokens_split_over_the_views(engines):
    from mmtok_cli.errors import MmtokError
    from mmtok_cli.options import METHODS

    engine = engines[True]
    images = [noise_image(3, SIZES[0]), noise_image(4, SIZES[2])]
    with pytest.raises(MmtokError, match="visionzip needs a vision tower with a CLS token"):  # SigLIP has none
        engine.run(images, ["Is there a cat?", "What colour is it?"], tokens=[7, 5], method="visionzip")
    for method in (m for m in METHODS if m != "visionzip"):
        answers = engine.run(images, ["Is there a cat?", "What colour is it?"], tokens=[7, 5], method=method,
                             max_new_tokens=2)
        assert [a.vision_kept for a in answers] == ([48, 16] if method == "full" else [7, 5]), method
        if method != "full":
            assert torch.bincount(torch.tensor(answers[0].kept_indices[0]) // 16).tolist() == [3, 2, 2], method


def test_eval_runs_every_method(paths, tmp_path):
    from mmtok_cli.synth import generate

    generate(tmp_path / "synth", 2, seed=0)
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(tmp_path / "synth" / "questions.jsonl"), "--model", str(paths[True]),
                                 "--device", TEST_DEVICE, "--tokens", "4", "--methods", "mmtok,divprune",
                                 "--max-new-tokens", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [(r["method"], r["tokens"]) for r in rows] == [("full", "full"), ("mmtok", 4), ("divprune", 4)]
    assert all(r["failed"] == 0 for r in rows) and rows[1]["mean_kept"] == 4


def _write_images(folder, sizes):
    names = []
    for i, size in enumerate(sizes):
        names.append(f"img{i}.png")
        noise_image(30 + i, size).save(folder / names[-1])
    return names


def _records(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_batch_ray_equals_local_batch_with_pan_and_scan_turned_on(paths, tmp_path):
    names = _write_images(tmp_path, SIZES)
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "image": names[i % 3], "question": QUESTION,
                                        "tokens": [3, 8, 500][i % 3]}) + "\n" for i in range(5)))
    # the checkpoint as Google ships it (no pan-and-scan), the flag turning it on in every Ray actor
    ray_rows, local_rows = ray_and_local_records(data, paths[False], workers=2, extra=("--pan-and-scan",))
    assert ray_rows == local_rows
    assert [r["vision_tokens"]["kept"] for r in local_rows] == [3, 8, 16, 3, 8]
    assert [r["vision_tokens"]["total"] for r in ray_rows] == [48, 48, 16, 48, 48]  # the long images' 2 crops
    assert all(r["pan_and_scan"] is True for r in ray_rows)


def _cli(*args):
    result = runner.invoke(app, [*map(str, args), "--device", TEST_DEVICE, "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    return result


def test_pan_and_scan_option_on_every_command(paths, engines, tmp_path):
    """--pan-and-scan on a checkpoint without it answers as the checkpoint that has it in its image processor
    (same weights), --no-pan-and-scan the other way round; every command takes it and says so."""
    long_image = tmp_path / "long.png"
    noise_image(3, SIZES[0]).save(long_image)
    picture = Image.open(long_image).convert("RGB")
    on, off = (engines[scan].ask(picture, QUESTION, tokens=6, max_new_tokens=3) for scan in (True, False))
    assert (on.vision_total, off.vision_total) == (48, 16)
    config = tmp_path / "c.yaml"
    config.write_text("pan_and_scan: true\n")

    for model, flag, want in ((paths[False], "--pan-and-scan", on), (paths[False], ("--config", config), on),
                              (paths[True], "--no-pan-and-scan", off)):
        got = json.loads(_cli("ask", long_image, QUESTION, "--model", model, "--tokens", 6, "--max-new-tokens", 3,
                              "--json", *([flag] if isinstance(flag, str) else flag)).stdout)
        assert (got["answer"], got["kept_indices"], got["vision_tokens"]["total"], got["pan_and_scan"]) == (
            want.answer, want.kept_indices, want.vision_total, want is on)

    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"image": "long.png", "question": QUESTION, "answer": "red"}) + "\n")
    report = tmp_path / "eval.json"
    _cli("eval", data, "--model", paths[False], "--tokens", 6, "--methods", "mmtok", "--max-new-tokens", 3,
         "--pan-and-scan", "--json", report)
    report = json.loads(report.read_text())
    assert report["pan_and_scan"] is True and report["results"][0]["mean_kept"] == 48

    shown = _cli("show", long_image, QUESTION, "--model", paths[False], "--tokens", 6, "--max-new-tokens", 3,
                 "--pan-and-scan", "--out", tmp_path / "kept.png")
    assert shown.stdout == f"mmtok: {on.answer}\n" and "mmtok 6/48" in shown.stderr

    profiled = tmp_path / "profile.json"
    _cli("profile", "--model", paths[False], "--image", long_image, "--tokens", 6, "--repeats", 1, "--warmup", 0,
         "--pan-and-scan", "--json", profiled)
    profiled = json.loads(profiled.read_text())
    assert profiled["pan_and_scan"] is True and profiled["results"][0]["vision_tokens"]["total"] == 48


def test_pan_and_scan_on_a_family_without_it_is_one_line(tiny_llava, tmp_path):
    from mmtok_cli.errors import UsageError

    config_only = tmp_path / "llava-config-only"  # the check reads config.json alone, before any weights load
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_llava / "config.json").read_text())
    image = tmp_path / "x.png"
    noise_image(1).save(image)
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"image": "x.png", "question": "q"}) + "\n")
    for args in (["ask", image, "q"], ["show", image, "q", "--out", tmp_path / "x-kept.png"], ["batch", data],
                 ["batch", data, "--ray"], ["profile", "--image", image]):
        result = runner.invoke(app, [*map(str, args), "--model", str(config_only), "--pan-and-scan"])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == ("error: --pan-and-scan: llava models have no pan-and-scan (only gemma3 "
                                         "crops long images into extra views)")
    with pytest.raises(UsageError, match="llava models have no pan-and-scan"):
        Engine(str(config_only), pan_and_scan=True)


def test_lmms_eval_model_takes_pan_and_scan(paths, engines):
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from mmtok_cli.errors import UsageError
    from mmtok_cli.lmms.model import Mmtok

    model = Mmtok(pretrained=str(paths[False]), tokens=6, device=TEST_DEVICE, dtype="float32", pan_and_scan=True)
    picture = noise_image(3, SIZES[0])
    model.task_dict = {"t": {"test": [{"image": picture}]}}
    request = Instance("generate_until", (QUESTION, {"max_new_tokens": 3}, lambda doc: [doc["image"]], 0, "t",
                                          "test"), idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    assert model.engine.pan_and_scan is True
    assert model.generate_until([request]) == [engines[True].ask(picture, QUESTION, tokens=6, max_new_tokens=3).answer]
    with pytest.raises(UsageError, match="pan_and_scan must be true or false"):
        Mmtok(pretrained=str(paths[False]), pan_and_scan="yes")


def _independent_checkpoint(path):
    """A Gemma 3 checkpoint written with transformers and tokenizers alone (none of mmtok's builders): a word-level
    tokenizer, a 96-px SigLIP pooled to 36 tokens per image, the real chat template's layout, BOS and all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Gemma3Config,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )

    words = "<pad> <eos> <bos> <unk> <start_of_turn> <end_of_turn> <start_of_image> <end_of_image> " \
            "<image_soft_token> user model what is in the image ? a cat dog red here colour of it".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=words[4:9], extra_special_tokens={
            "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    template = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] | trim }}{% endif %}{% endfor %}"
                "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=96, patch_size=8),
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "head_dim": 16, "vocab_size": len(words), "sliding_window": 16},
        mm_tokens_per_image=36, boi_token_index=6, eoi_token_index=7, image_token_index=8,
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight)  # zero after init
    model.save_pretrained(path)
    Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 96, "width": 96}), tokenizer=tokenizer,
                    image_seq_length=36, chat_template=template).save_pretrained(path)
    return path


def test_ask_batch_and_show_on_an_independently_built_checkpoint(tmp_path):
    path = str(_independent_checkpoint(tmp_path / "independent"))
    image = tmp_path / "cat.png"
    noise_image(9, (150, 100)).save(image)
    common = ["--model", path, "--device", TEST_DEVICE, "--dtype", "float32", "--max-new-tokens", "3"]

    asked = runner.invoke(app, ["ask", str(image), "what is in the image ?", "--tokens", "5", "--json", *common])
    assert asked.exit_code == 0, asked.stderr
    record = json.loads(asked.stdout)
    assert record["family"] == "gemma3" and record["vision_tokens"] == {"total": 36, "kept": 5, "cached": False}
    assert len(record["kept_indices"][0]) == 5
    full = runner.invoke(app, ["ask", str(image), "what is in the image ?", "--method", "full", "--json", *common])
    full = json.loads(full.stdout)
    assert full["prompt_tokens"]["unpruned"] == record["prompt_tokens"]["unpruned"]
    model, processor = Gemma3ForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)
    model = model.to(TEST_DEVICE)
    inputs = _inputs(processor, [Image.open(image).convert("RGB")], ["what is in the image ?"], scan=False)
    assert inputs["input_ids"][0].tolist().count(2) == 1  # one BOS, the template's
    plain = model.generate(**inputs, max_new_tokens=3, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    assert full["prompt_tokens"]["unpruned"] == inputs["input_ids"].shape[1]
    assert full["answer"] == processor.tokenizer.decode(plain, skip_special_tokens=True).strip()
    assert record["prompt_tokens"]["unpruned"] - record["prompt_tokens"]["pruned"] == 31

    names = _write_images(tmp_path, [(150, 100), (60, 200), (96, 96)])
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"image": n, "question": "what colour is it ?", "tokens": k}) + "\n"
                            for n, k in zip(names, [4, 36, 9])))
    batch = runner.invoke(app, ["batch", str(data), "--batch-size", "3", *common])
    assert batch.exit_code == 0, batch.stderr
    engine = Engine(path, device=TEST_DEVICE, dtype="float32")
    for rec, name, k in zip(_records(batch.stdout), names, [4, 36, 9]):
        alone = engine.ask(Image.open(tmp_path / name).convert("RGB"), "what colour is it ?", tokens=k,
                           max_new_tokens=3)
        assert rec["vision_tokens"] == {"total": 36, "kept": k, "cached": False} and rec["answer"] == alone.answer

    picture = tmp_path / "show.png"
    shown = runner.invoke(app, ["show", str(image), "what is in the image ?", "--tokens", "6", "--methods",
                                "mmtok,full", "--out", str(picture), *common])
    assert shown.exit_code == 0, shown.stderr
    assert "mmtok 6/36" in shown.stderr
    with Image.open(picture) as sheet:
        assert sheet.format == "PNG" and np.asarray(sheet).std() > 0
