"""`mmtok serve --model demo` in a subprocess, talked to with the official `openai` client and raw HTTP: answers equal
`mmtok ask`, streams concatenate to them, concurrent requests share passes and answer as alone, every bad request
gets its OpenAI-shaped error and the server goes on."""

import asyncio
import base64
import json
import signal

import httpx
import pytest
import torch
from typer.testing import CliRunner

from mmtok_cli.cli import app
from mmtok_cli.io import load_image

from .conftest import noise_image
from .device import TEST_DEVICE
from .serving import SAMPLES, Served, data_url, metric, user

openai = pytest.importorskip("openai")

SCENE = SAMPLES / "scene.png"
MAX_REQUEST_TOKENS = 100


@pytest.fixture(scope="module")
def server():
    served = Served("--model", "demo", "--max-batch-size", "8", "--batch-wait-ms", "50", "--max-request-tokens",
                    str(MAX_REQUEST_TOKENS), "--max-body-mb", "2", "--max-queue", "64")
    yield served
    # SIGTERM: uvicorn shuts down gracefully, then dies of the signal as the shell expects (exit 143).
    assert served.stop() == -signal.SIGTERM and "Traceback" not in served.log(), served.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def demo():
    from mmtok_cli.engine import Engine

    return Engine("demo", device=TEST_DEVICE, dtype="float32")


def ask_json(image, question, *options):
    result = CliRunner().invoke(app, ["ask", str(image), question, "--model", "demo", "--json", *options])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_the_openai_client_gets_mmtok_asks_answer(client):
    for question, options, extra in [("Is there a red circle?", ["--tokens", "8"], {"tokens": 8}),
                                     ("What colour is the square?", ["--method", "full"], {"method": "full"}),
                                     ("Is there a blue square?", ["--tokens", "4", "--agent"],
                                      {"tokens": 4, "agent": True})]:
        reply = client.chat.completions.create(model="demo", messages=user(data_url(SCENE), question),
                                               extra_body={"mmtok": extra})
        asked = ask_json(SCENE, question, *options)
        assert reply.choices[0].message.content == asked["answer"] and reply.choices[0].finish_reason == "stop"
        mm = reply.mmtok
        for key in ("kept_indices", "prompt_tokens", "selection", "agent_answer"):
            assert mm.get(key) == asked.get(key), key
        # The server's cache holds the scene after the first request; `ask` encodes it afresh.
        assert mm["vision_tokens"] == {**asked["vision_tokens"], "cached": extra != {"tokens": 8}}
        assert mm["speedup"]["estimated"] == asked["speedup"]["estimated"] and mm["method"] == asked["method"]
        assert mm["batch_size"] == 1 and {"load", "queue", "prefill", "total"} <= set(mm["timings_ms"])
        assert reply.usage.prompt_tokens == asked["prompt_tokens"]["pruned"]
        assert reply.usage.prompt_tokens_details.image_tokens == asked["vision_tokens"]["kept"]
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        assert reply.model == "demo" and reply.object == "chat.completion"


def test_a_stream_concatenates_to_the_answer_and_ends_with_usage(client, demo):
    question = "Describe the image."
    messages = user(data_url(SCENE), question)
    stream = client.chat.completions.create(model="demo", messages=messages, stream=True, max_tokens=60,
                                            stream_options={"include_usage": True}, extra_body={"mmtok": {"tokens": 64}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    alone = demo.ask(load_image(str(SCENE)), question, tokens=64, max_new_tokens=60)
    assert text == alone.answer and len(alone.output_ids) > 20  # many deltas, one answer
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 10
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop"
    assert finish[0].mmtok["kept_indices"] == alone.kept_indices
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == len(alone.output_ids)
    assert last.usage.prompt_tokens == alone.prompt_pruned and all(c.usage is None for c in chunks[:-1])


def test_stop_strings_and_max_tokens_cut_the_answer(client, demo):
    image, question = load_image(str(SCENE)), "Describe the image."
    full = demo.ask(image, question, tokens=64, max_new_tokens=60).answer
    cut = full[: full.index(" ,")].strip()
    messages = user(data_url(SCENE), question)
    for stream in (False, True):
        reply = client.chat.completions.create(model="demo", messages=messages, stop=[" ,", "zebra"], stream=stream,
                                               max_tokens=60, extra_body={"mmtok": {"tokens": 64}})
        if stream:
            chunks = list(reply)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        else:
            text, reason = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert (text, reason) == (cut, "stop")
    short = client.chat.completions.create(model="demo", messages=messages, max_completion_tokens=3,
                                           extra_body={"mmtok": {"tokens": 64}})
    three = demo.ask(image, question, tokens=64, max_new_tokens=3)
    assert short.choices[0].message.content == three.answer and short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 3


def test_concurrent_requests_share_passes_and_answer_as_alone(server, demo):
    pictures = [SCENE, SAMPLES / "shapes.png", SAMPLES / "three_circles.png"]
    questions = ["Is there a red circle?", "What colour is the square?", "How many circles are there?",
                 "Is there a blue square?"]
    cases = []
    for i in range(32):
        options = {"tokens": [4, 8, 16, 64][i % 4]}
        if i % 8 == 5:
            options["method"] = "full"  # cannot share a pass with mmtok rows: grouped apart
        cases.append((pictures[i % 3], questions[i % 4], options))
    before = httpx.get(f"{server.url}/metrics").text

    async def one(client, picture, question, options):
        reply = await client.chat.completions.create(model="demo", messages=user(data_url(picture), question),
                                                     max_tokens=8, extra_body={"mmtok": options})
        return reply

    async def everyone():
        async with openai.AsyncOpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(one(client, *case) for case in cases))

    replies = asyncio.run(everyone())
    for (picture, question, options), reply in zip(cases, replies):
        alone = demo.ask(load_image(str(picture)), question, max_new_tokens=8, **options)
        assert reply.choices[0].message.content == alone.answer
        assert reply.mmtok["kept_indices"] == alone.kept_indices
    after = httpx.get(f"{server.url}/metrics").text
    passes = metric(after, "mmtok_batch_size_count") - metric(before, "mmtok_batch_size_count")
    rows = metric(after, "mmtok_batch_size_sum") - metric(before, "mmtok_batch_size_sum")
    assert rows == 32 and passes < 32  # passes of more than one request
    assert max(r.mmtok["batch_size"] for r in replies) > 1
    assert metric(after, "mmtok_requests_total", 'status="200"') - metric(before, "mmtok_requests_total",
                                                                          'status="200"') == 32


def test_temperature_zero_is_greedy_and_a_seed_repeats_its_sample(client, demo):
    image, question = load_image(str(SCENE)), "Describe the image."
    messages = user(data_url(SCENE), question)
    greedy = demo.ask(image, question, tokens=64, max_new_tokens=20).answer

    def answer(**kwargs):
        reply = client.chat.completions.create(model="demo", messages=messages, max_tokens=20,
                                               extra_body={"mmtok": {"tokens": 64}}, **kwargs)
        return reply.choices[0].message.content

    assert answer(temperature=0) == answer() == answer(temperature=0, top_p=0.5, seed=3) == greedy
    hot = [answer(temperature=2.0, seed=11) for _ in range(2)]
    assert hot[0] == hot[1] != greedy  # the demo's greedy caption is not what a temperature of 2 draws
    from mmtok_cli.engine import Sampling

    drawn = demo.run([image], [question], tokens=64, max_new_tokens=20, sampling=Sampling(2.0, None, 11))[0]
    assert hot[0] == drawn.answer


def test_a_conversation_goes_through_the_chat_template_and_the_last_question_selects(client, demo):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmtok_cli.demo import CHECKPOINT

    image = load_image(str(SCENE))
    url = data_url(SCENE)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                     {"type": "text", "text": "Describe the image."}]},
        {"role": "assistant", "content": "a large red circle"},
        {"role": "user", "content": "Is there a red circle?"},
    ]
    reply = client.chat.completions.create(model="demo", messages=messages, max_tokens=8,
                                           extra_body={"mmtok": {"method": "full"}})
    # Plain transformers on the same turns: every vision token, the checkpoint's own template.
    processor = AutoProcessor.from_pretrained(CHECKPOINT)
    model = LlavaForConditionalGeneration.from_pretrained(CHECKPOINT, dtype=torch.float32).eval().to(TEST_DEVICE)
    turns = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
             {"role": "assistant", "content": [{"type": "text", "text": "a large red circle"}]},
             {"role": "user", "content": [{"type": "text", "text": "Is there a red circle?"}]}]
    prompt = processor.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt").to(TEST_DEVICE)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert reply.choices[0].message.content == expected
    assert reply.mmtok["prompt_tokens"]["unpruned"] == inputs["input_ids"].shape[1]
    # The selection reads the last user message: the same kept tokens as asking it alone.
    pruned = client.chat.completions.create(model="demo", messages=messages, max_tokens=1,
                                            extra_body={"mmtok": {"tokens": 8}})
    assert pruned.mmtok["kept_indices"] == demo.ask(image, "Is there a red circle?", tokens=8,
                                                    max_new_tokens=1).kept_indices


def _chat(**changes):
    body = {"model": "demo", "messages": user(data_url(SCENE), "Is there a red circle?"), "max_tokens": 4}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


TWO_IMAGES = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(SCENE)}}] * 2
               + [{"type": "text", "text": "Same?"}]}]
NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"hello, not a picture").decode()


@pytest.mark.parametrize("body, status, param, words", [
    (_chat(n=2), 400, "n", "n > 1"),
    (_chat(logprobs=True), 400, "logprobs", "not supported"),
    (_chat(best_of=3), 400, "best_of", "not supported"),
    (_chat(messages=[{"role": "user", "content": "hello"}]), 400, "messages", "exactly one image"),
    (_chat(messages=TWO_IMAGES), 400, "messages", "exactly one image"),
    (_chat(messages=user(data_url(SCENE), "hi") + [{"role": "assistant", "content": "hm"}]), 400, "messages[1]",
     "last message"),
    (_chat(mmtok={"tokens": 0}), 400, "mmtok.tokens", "positive integer"),
    (_chat(mmtok={"method": "magic"}), 400, "mmtok.method", "unknown mmtok.method"),
    (_chat(mmtok={"alpha": -1}), 400, "mmtok.alpha", "mmtok.alpha"),
    (_chat(mmtok={"colour": "red"}), 400, "mmtok.colour", "not an mmtok option"),
    (_chat(mmtok={"method": "full", "agent": True}), 400, "mmtok.agent", "read the question"),
    (_chat(max_tokens=MAX_REQUEST_TOKENS + 1), 400, "max_tokens", f"limit of {MAX_REQUEST_TOKENS}"),
    (_chat(temperature=3), 400, "temperature", "from 0 to 2"),
    (_chat(stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4"),
    (_chat(stream_options={"include_usage": True}), 400, "stream_options", "stream: true"),
    (_chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(SCENE),
                                                                                        "detail": "high"}},
                                                  {"type": "text", "text": "hi"}]}]), 400,
     "messages[0].content[0].image_url.detail", "not supported"),
    (_chat(model="gpt-4o"), 404, "model", "not served here"),
    (_chat(messages=user("http://127.0.0.1:9/cat.png", "hi")), 400, "messages[0].content[0].image_url.url",
     "private"),
    (_chat(messages=user("http://localhost:9/cat.png", "hi")), 400, "messages[0].content[0].image_url.url",
     "loopback"),
    (_chat(messages=user("file:///etc/hostname", "hi")), 400, "messages[0].content[0].image_url.url",
     "--allowed-local-media-path"),
    (_chat(messages=user("ftp://example.com/cat.png", "hi")), 400, "messages[0].content[0].image_url.url",
     "scheme"),
    (_chat(messages=user(NOT_AN_IMAGE, "hi")), 422, "messages[0].content[0].image_url.url", "not an image"),
    (_chat(messages=user("data:image/png;base64,@@@@", "hi")), 422, "messages[0].content[0].image_url.url",
     "base64"),
])
def test_bad_requests_get_one_openai_error_each(server, body, status, param, words):
    reply = httpx.post(f"{server.api}/chat/completions", json=body, timeout=60)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert words in error["message"] and error["type"] == "invalid_request_error"


def test_hostile_bodies_and_routes_then_the_server_still_answers(server, client, tmp_path):
    huge = httpx.post(f"{server.api}/chat/completions", content=b"x" * 2_100_000,
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert huge.status_code == 413 and "2 MB" in huge.json()["error"]["message"]

    def chunked():
        for _ in range(40):
            yield b" " * 60_000

    streamed = httpx.post(f"{server.api}/chat/completions", content=chunked(), timeout=60)  # no Content-Length
    assert streamed.status_code == 413
    broken = httpx.post(f"{server.api}/chat/completions", content=b"{not json", timeout=60)
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    missing = httpx.get(f"{server.url}/v1/embeddings", timeout=60)
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    path = tmp_path / "noise.png"
    noise_image(3, (90, 70)).save(path)
    reply = client.chat.completions.create(model="demo", messages=user(data_url(path), "Is there a red circle?"),
                                           max_tokens=4, extra_body={"mmtok": {"tokens": 8}})
    asked = ask_json(path, "Is there a red circle?", "--tokens", "8", "--max-new-tokens", "4")
    assert reply.choices[0].message.content == asked["answer"]
    assert reply.mmtok["kept_indices"] == asked["kept_indices"]


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["demo"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("mmtok_requests_total", "mmtok_queue_length", "mmtok_batch_size_bucket", "mmtok_vision_tokens_total",
                 "mmtok_vision_tokens_kept_total", "mmtok_request_latency_seconds_bucket",
                 "mmtok_time_to_first_token_seconds_bucket"):
        assert name in text, name
