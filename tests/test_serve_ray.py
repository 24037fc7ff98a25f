"""`mmtok serve --ray --replicas 2`: the same app on Ray Serve, one model copy per replica, answers like `mmtok ask`."""

import asyncio

import httpx
import pytest

from mmtok_cli.io import load_image

from .device import TEST_DEVICE
from .serving import SAMPLES, Served, data_url, free_port, user

openai = pytest.importorskip("openai")
pytest.importorskip("ray.serve")


def test_two_replicas_answer_like_ask():
    from mmtok_cli.engine import Engine

    served = Served("--model", "demo", "--ray", "--replicas", "2", "--max-batch-size", "4", "--batch-wait-ms", "50",
                    port=free_port(), ready="2 Ray Serve replicas ready", timeout=300)
    try:
        cases = [(SAMPLES / name, question, tokens) for name in ("scene.png", "shapes.png")
                 for question in ("Is there a red circle?", "What colour is the square?") for tokens in (8, 64)]

        async def everyone():
            async with openai.AsyncOpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=120) as client:
                return await asyncio.gather(*(
                    client.chat.completions.create(model="demo", messages=user(data_url(path), question),
                                                   max_tokens=6, extra_body={"mmtok": {"tokens": tokens}})
                    for path, question, tokens in cases))

        replies = asyncio.run(everyone())
        demo = Engine("demo", device=TEST_DEVICE, dtype="float32")
        for (path, question, tokens), reply in zip(cases, replies):
            alone = demo.ask(load_image(str(path)), question, tokens=tokens, max_new_tokens=6)
            assert reply.choices[0].message.content == alone.answer
            assert reply.mmtok["kept_indices"] == alone.kept_indices
            assert reply.usage.prompt_tokens == alone.prompt_pruned
        assert httpx.get(f"{served.url}/health").status_code == 200
    finally:
        served.stop()
    assert "Traceback" not in served.log(), served.log()
