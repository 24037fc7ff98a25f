"""The server's pieces in process: request validation (`serve/protocol.py`), decoding options against the
checkpoint's generation config (`engine.Sampling`), and a row's text as it streams (`serve/batcher.RowText`)."""

import json
import shutil

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmtok_cli.engine import Engine, Sampling
from mmtok_cli.serve.options import ServeOptions
from mmtok_cli.serve.protocol import ApiError, parse_chat

from .conftest import noise_image
from .device import TEST_DEVICE, to_device

URL = "data:image/png;base64,iVBORw0KGgo="
OPTIONS = ServeOptions(model="m", tokens=32, max_new_tokens=16, selection={"alpha": 0.25})


def parse(has_template=True, **body):
    return parse_chat({"model": "m", **body}, OPTIONS, model_name="m", has_template=has_template)


def one_turn(question="What is it?"):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": URL}},
                                         {"type": "text", "text": question}]}]


def test_a_request_becomes_the_item_a_jsonl_line_would():
    request = parse(messages=one_turn(), max_tokens=5, mmtok={"tokens": 8, "tau_v": 0.1}, n=1, presence_penalty=0,
                    temperature=None, stop="###")
    item = request.item
    assert (item.question, item.tokens, item.max_new_tokens, item.id) == ("What is it?", 8, 5, request.id)
    assert request.conversation is None  # exactly `mmtok ask`'s prompt
    assert request.run.kwargs() == {"method": "mmtok", "alpha": 0.25, "tau_v": 0.1, "agent": False,
                                    "agent_tokens": None}
    assert request.stop == ("###",) and request.sampling == Sampling() and request.url == URL
    defaults = parse(messages=one_turn())
    assert (defaults.item.tokens, defaults.item.max_new_tokens) == (32, 16)  # the server's flags


def test_a_conversation_keeps_its_turns_and_asks_the_last_user_text():
    messages = [{"role": "developer", "content": "Be brief."}, *one_turn("Describe it."),
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                {"role": "user", "content": [{"type": "text", "text": "Its colour?"}, {"type": "text", "text": "Now."}]}]
    request = parse(messages=messages)
    assert request.item.question == "Its colour?\nNow."
    assert request.conversation == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        {"role": "user", "content": [{"type": "text", "text": "Its colour?"}, {"type": "text", "text": "Now."}]},
    ]
    with pytest.raises(ApiError, match="no chat template"):
        parse(has_template=False, messages=messages)
    assert parse(has_template=False, messages=one_turn()).conversation is None


@pytest.mark.parametrize("body, param", [
    ({"messages": one_turn(), "top_p": 0}, "top_p"),
    ({"messages": one_turn(), "seed": 2**63}, "seed"),
    ({"messages": one_turn(), "max_tokens": 3, "max_completion_tokens": 4}, "max_tokens"),
    ({"messages": one_turn(), "stream": "yes"}, "stream"),
    ({"messages": one_turn(), "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": one_turn(), "mmtok": {"agent_tokens": 4}}, "mmtok.agent_tokens"),
    ({"messages": one_turn(), "mmtok": {"budget": "half"}}, "mmtok.budget"),
    ({"messages": one_turn(), "mmtok": {"tau_t": 0}}, "mmtok.tau_t"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}], "name": "me"}]}, "messages[0].name"),
    ({"messages": one_turn(" ")}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x" * 20_001 + " "}]}, "messages"),
])
def test_what_cannot_be_honoured_is_a_400_naming_it(body, param):
    with pytest.raises(ApiError) as caught:
        parse(**body)
    assert caught.value.status == 400 and caught.value.param == param
    assert set(caught.value.body()["error"]) == {"message", "type", "param", "code"}


def test_decoding_options_and_the_checkpoints_generation_config(tiny_llava, tmp_path):
    greedy_config = type("Config", (), {"do_sample": False})()
    sampling_config = type("Config", (), {"do_sample": True})()
    assert Sampling(0.0, 0.5, 3).resolved(sampling_config) == Sampling(0.0) == Sampling().resolved(greedy_config)
    assert Sampling(None, 0.9, 3).resolved(sampling_config) == Sampling(None, 0.9, 3)
    assert Sampling(0.0).generate_kwargs() == {"do_sample": False}
    assert Sampling().generate_kwargs() == {}  # the checkpoint decides
    assert Sampling(0.7, 0.9).generate_kwargs() == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}

    # A checkpoint that samples by default: absent temperature samples as its config says; `ask` stays greedy.
    folder = tmp_path / "sampling"
    shutil.copytree(tiny_llava, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=1.5, top_k=20)
    (folder / "generation_config.json").write_text(json.dumps(config))
    engine = Engine(str(folder), device=TEST_DEVICE, dtype="float32")
    image, question = noise_image(4), "What is in the picture?"
    model = LlavaForConditionalGeneration.from_pretrained(folder).eval().to(TEST_DEVICE)
    processor = AutoProcessor.from_pretrained(folder)
    prompt = engine.adapter.prompt(question)
    inputs = to_device(processor(images=[image], text=[prompt], return_tensors="pt"))

    def plain(**options):
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, **options)
        return out[0, inputs["input_ids"].shape[1]:].tolist()

    every = {"method": "full", "max_new_tokens": 12}
    drawn = engine.run([image], [question], sampling=Sampling(seed=5), **every)[0]
    torch.manual_seed(5)
    assert drawn.output_ids == plain()[: len(drawn.output_ids)]  # the config's temperature and top_k
    asked = engine.ask(image, question, **every)
    assert asked.output_ids == plain(do_sample=False)[: len(asked.output_ids)]
    assert engine.run([image], [question], sampling=Sampling(0.0), **every)[0].output_ids == asked.output_ids
    again = engine.run([image], [question], sampling=Sampling(seed=5), **every)[0]
    assert again.output_ids == drawn.output_ids


def test_a_row_streams_only_text_that_cannot_change(engine):
    from mmtok_cli.serve.batcher import Job, RowText

    tokenizer = engine.adapter.tokenizer
    text = "the red cat sat ### on the mat"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    class Loop:  # the event loop's side, collected in order
        def __init__(self):
            self.events = []

        def call_soon_threadsafe(self, put, event):
            self.events.append(event)

    for stops, expected, reason in [((), text, "length"), (("###",), "the red cat sat", "stop"),
                                    (("sat #", "zebra"), "the red cat", "stop")]:
        request = parse(messages=one_turn(), stop=list(stops), stream=True)
        job = Job(request=request, loop=Loop())
        row = RowText(job, tokenizer, eos={tokenizer.eos_token_id}, limit=len(ids))
        done = [row.feed(token) for token in ids]
        final = row.finish()
        deltas = "".join(payload for kind, payload in job.loop.events if kind == "delta")
        assert final == expected == deltas and row.reason == reason
        assert done[-1] and (reason == "stop" or not any(done[:-1]))  # a stop ends the row early
        for stop in stops:  # a stop string never shows, not even in part
            assert all(stop[:3] not in payload for _, payload in job.loop.events)
    eos = RowText(Job(request=parse(messages=one_turn()), loop=Loop()), tokenizer, {tokenizer.eos_token_id}, 99)
    assert [eos.feed(t) for t in [*ids[:2], tokenizer.eos_token_id, ids[2]]] == [False, False, True, True]
    assert eos.count == 3 and eos.reason == "stop"


def test_a_chat_template_that_refuses_the_messages_is_a_one_line_error(engine, monkeypatch):
    from mmtok_cli.errors import MmtokError

    refusing = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns here') }}{% endif %}USER:"
    monkeypatch.setattr(engine.adapter.processor, "chat_template", refusing)
    turns = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    with pytest.raises(MmtokError, match="refuses these messages: no system turns here"):
        engine.adapter.prompt("What is it?", turns)
    assert engine.adapter.prompt("What is it?", turns[1:]) == "USER:"
