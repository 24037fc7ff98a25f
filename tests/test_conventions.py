"""The papers' conventions, selectable: --budget (per-view counts) and --question-words (the reference's rule)."""

import json

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.text import all_words, question_words

from . import reference
from .conftest import noise_image
from .device import TEST_DEVICE

runner = CliRunner()


@pytest.mark.parametrize("question, words", [
    ("What colour is the cat?", ["Question:", "What", "colour", "is", "the", "cat?"]),
    ("Is there a dog in the image?\nAnswer the question using a single word or phrase.",
     ["Question:", "Is", "there", "a", "dog", "in", "the", "image?", "Answer", "the", "question", "using", "a",
      "single", "word", "or", "phrase."]),
    ("  How many   people are\tthere? ", ["Question:", "How", "many", "people", "are", "there?"]),
    ("<image>\nWhat is it?", ["Question:", "What", "is", "it?"]),
    ("", ["Question:"]),
])
def test_all_words_is_the_reference_rule(question, words):
    # Ironieser/MMTok d1522cd: f"Question: {question_text}".split(), no stop-word filter, punctuation kept
    assert all_words(question) == words == question_words(question, "all")
    assert question_words(question, "content") != words


def test_question_words_all_selects_with_every_word(engine, tiny_llava):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava).eval().to(TEST_DEVICE)
    processor = AutoProcessor.from_pretrained(tiny_llava)
    question, image, k = "Is the cat on the sofa?", noise_image(8), 6
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pixels = processor(images=[image], text=[prompt], return_tensors="pt")["pixel_values"].to(TEST_DEVICE)
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        U = hidden[-2][0, 1:]
        V = model.model.multi_modal_projector(U)
        words = ["Question:", "Is", "the", "cat", "on", "the", "sofa?"]
        ids = processor.tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
        T = model.get_input_embeddings()(torch.tensor(ids, device=TEST_DEVICE))
    answer = engine.ask(image, question, tokens=k, max_new_tokens=1, question_words="all")
    assert answer.kept_indices == [reference.mmtok_indices(V, U, T, k)]
    assert answer.conventions == {"question_words": "all"}  # one view: the budget convention does not apply
    content = engine.ask(image, question, tokens=k, max_new_tokens=1)
    assert content.conventions == {"question_words": "content"}


@pytest.fixture(scope="module")
def tiny_next(tmp_path_factory):
    from mmtok_cli.tiny import build_tiny_llava_next

    return build_tiny_llava_next(tmp_path_factory.mktemp("next") / "tiny-llava-next", seed=4)


def test_budget_counts_per_view_in_batch_records(tiny_next, tmp_path):
    from mmtok_cli.models.views import split_evenly

    picture = tmp_path / "a.png"
    noise_image(3, (160, 120)).save(picture)  # base view + 2 x 2 crops of 16 tokens each (before unpadding)
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"image": str(picture), "question": "Is there a cat?"}) + "\n")
    records = {}
    for budget in ("total", "per-view", "global"):
        out = tmp_path / f"{budget}.jsonl"
        result = runner.invoke(app, ["batch", str(data), "--out", str(out), "--model", str(tiny_next), "--device",
                                     TEST_DEVICE, "--tokens", "7", "--max-new-tokens", "1", "--budget", budget])
        assert result.exit_code == 0, result.output
        records[budget] = json.loads(out.read_text())
    from mmtok_cli.engine import Engine

    engine = Engine(str(tiny_next), device=TEST_DEVICE, dtype="float32")
    from PIL import Image

    vt = engine.adapter.encode(engine.prepare([Image.open(picture)], ["Is there a cat?"]))
    sizes = torch.bincount(vt.parts[0]).tolist()
    assert records["total"]["vision_tokens"]["kept"] == sum(split_evenly(7, sizes)) == 7
    assert records["per-view"]["vision_tokens"]["kept"] == sum(min(7, s) for s in sizes) == 7 * len(sizes)
    assert records["global"]["vision_tokens"]["kept"] == 7
    for budget, record in records.items():
        assert record["selection"] == {"budget": budget, "question_words": "content"}
    bad = runner.invoke(app, ["batch", str(data), "--model", str(tiny_next), "--question-words", "some"])
    assert bad.exit_code == 2 and "unknown --question-words 'some'; use content, all" in bad.output
