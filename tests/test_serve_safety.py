"""`mmtok serve`'s safety against hostile clients and media, on a real server (a tiny Qwen2.5-VL checkpoint): the
API key, image URLs (redirects, deadline, decoded-size limit, private addresses on every hop), file:// inside the
allowed folder only, a bounded queue, clients that leave, and a stream that fails mid-way."""

import http.server
import io
import json
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest

from mmtok_cli import io as mmtok_io
from mmtok_cli.errors import RefusedSource
from mmtok_cli.io import fetch_image, public_address

from .conftest import noise_image
from .device import TEST_DEVICE
from .serving import Served, metric, user
from .test_hardening import HANG_UP_MARGIN_S, _Hostile, _trickles_since

openai = pytest.importorskip("openai")
# The checkpoint's min_new_tokens is over what short answers may generate, on purpose (see `talker`).
pytestmark = pytest.mark.filterwarnings("ignore:Unfeasible length constraints")

KEY = "sk-test-key"
PICTURE = noise_image(21, (96, 72))
RELEASE = threading.Event()


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _huge_png_header(width: int = 8_000, height: int = 8_000) -> bytes:
    """A PNG that says it is width x height (64 Mpixel) and holds no pixels: only its header is ever read."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


class _Images(_Hostile):
    """/img.png; /hop/N redirects N times before it; /hold.png waits for RELEASE; /bomb.png says it has 64 Mpixel;
    anything else is test_hardening's hostile server (/trickle: a byte every 0.3 s)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/hop/"):
            left = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/hop/{left - 1}" if left > 1 else "/img.png")
            self.end_headers()
            return
        if self.path == "/hold.png":
            RELEASE.wait(60)
        body = {"/img.png": _png(PICTURE), "/hold.png": _png(PICTURE), "/bomb.png": _huge_png_header()}.get(self.path)
        if body is None:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _start(host: str) -> tuple[http.server.ThreadingHTTPServer, str]:
    httpd = http.server.ThreadingHTTPServer((host, 0), _Images)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://{host}:{httpd.server_address[1]}"


@pytest.fixture(scope="module")
def images():
    httpd, url = _start("127.0.0.1")
    yield url
    RELEASE.set()
    httpd.shutdown()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    (folder / "inside.png").write_bytes(_png(PICTURE))
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    outside.write_bytes(_png(PICTURE))
    (folder / "link.png").symlink_to(outside)
    return folder, outside


@pytest.fixture(scope="module")
def talker(tmp_path_factory):
    """A tiny Qwen2.5-VL that never stops before max_tokens (its generation config's min_new_tokens)."""
    from mmtok_cli.tiny import build_tiny_qwen_vl

    path = build_tiny_qwen_vl(tmp_path_factory.mktemp("serve") / "tiny-qwen", seed=3)
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, "min_new_tokens": 1000}))
    return path


@pytest.fixture(scope="module")
def server(talker, media):
    served = Served("--model", str(talker), "--api-key", KEY, "--allow-private-urls", "--allowed-local-media-path",
                    str(media[0]), "--max-queue", "2", "--max-batch-size", "4", "--batch-wait-ms", "20",
                    "--download-timeout", "5", "--max-request-tokens", "400", "--max-new-tokens", "4",
                    "--max-body-mb", "1", api_key=KEY)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def reference(talker):
    from mmtok_cli.engine import Engine

    return Engine(str(talker), device=TEST_DEVICE, dtype="float32").ask(PICTURE, "What is this?", tokens=8,
                                                                         max_new_tokens=4)


def chat(server, url, *, key=KEY, timeout=60, **body):
    payload = {"model": server.model, "messages": user(url, "What is this?"), "mmtok": {"tokens": 8}, **body}
    return httpx.post(f"{server.api}/chat/completions", json=payload, timeout=timeout,
                      headers={"Authorization": f"Bearer {key}"} if key else {})


def test_every_route_but_health_wants_the_key(server, reference):
    for key in (None, "sk-wrong"):
        reply = chat(server, data_url_of(PICTURE), key=key)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for route in ("/v1/models", "/metrics"):
            assert httpx.get(f"{server.url}{route}", headers=headers).status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200
    client = openai.OpenAI(base_url=server.api, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=server.model, messages=user(data_url_of(PICTURE), "What is this?"))
    good = openai.OpenAI(base_url=server.api, api_key=KEY, max_retries=0, timeout=120)
    reply = good.chat.completions.create(model=server.model, messages=user(data_url_of(PICTURE), "What is this?"),
                                         extra_body={"mmtok": {"tokens": 8}})
    assert reply.choices[0].message.content == reference.answer


def data_url_of(image) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(_png(image)).decode()


def test_url_and_file_images_answer_like_their_pixels(server, images, media, reference):
    for url in (f"{images}/img.png", f"{images}/hop/3", f"file://{media[0] / 'inside.png'}"):
        reply = chat(server, url)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == reference.answer
        assert reply.json()["mmtok"]["kept_indices"] == reference.kept_indices


def test_hostile_images_get_their_status_and_the_server_goes_on(server, images, media, reference):
    where = "messages[0].content[0].image_url.url"
    before = len(_Hostile.trickles)
    slow = chat(server, f"{images}/trickle")
    assert slow.status_code == 422 and "not complete within 5 s" in slow.json()["error"]["message"]
    (lasted,) = _trickles_since(before)  # the download itself stopped at its deadline
    assert lasted < 5 + HANG_UP_MARGIN_S
    cases = [
        (f"{images}/hop/6", 422, "more than 5 redirects"),
        (f"{images}/bomb.png", 422, "Mpixel"),
        (f"file://{media[0] / '..' / media[1].parent.name / media[1].name}", 400, "outside the folder"),
        (f"file://{media[0] / 'link.png'}", 400, "outside the folder"),  # a link out of the folder
        (f"file://{media[0] / 'nothing.png'}", 422, "not found"),
        (f"file://{media[0]}", 400, "not a regular file"),
    ]
    for url, status, words in cases:
        reply = chat(server, url)
        assert reply.status_code == status, (url, reply.text)
        error = reply.json()["error"]
        assert words in error["message"] and error["param"] == where, (url, error)
    big = httpx.post(f"{server.api}/chat/completions", content=b"[" + b"0," * 600_000 + b"0]",
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, timeout=60)
    assert big.status_code == 413
    after = chat(server, f"{images}/img.png")
    assert after.json()["choices"][0]["message"]["content"] == reference.answer


def _held(server, images, results, **body):
    try:
        results.append(chat(server, f"{images}/hold.png", timeout=120, **body))
    except httpx.HTTPError as exc:
        results.append(exc)


def _wait_for(server, name, labels, value, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        if metric(text, name, labels) >= value:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{name}{{{labels}}} never reached {value}")


def test_a_full_queue_answers_503_and_the_queued_ones_are_answered(server, images, reference):
    RELEASE.clear()
    results: list = []
    threads = [threading.Thread(target=_held, args=(server, images, results)) for _ in range(2)]
    for thread in threads:
        thread.start()
    _wait_for(server, "mmtok_queue_length", "", 2)
    full = chat(server, data_url_of(PICTURE))
    assert full.status_code == 503 and full.headers["Retry-After"] == "1"
    assert full.json()["error"]["code"] == "queue_full" and "--max-queue" in full.json()["error"]["message"]
    RELEASE.set()
    for thread in threads:
        thread.join(120)
    assert [r.status_code for r in results] == [200, 200]
    assert all(r.json()["choices"][0]["message"]["content"] == reference.answer for r in results)


def test_a_client_that_leaves_costs_no_more_work(server, images, reference):
    auth = {"Authorization": f"Bearer {KEY}"}
    before = httpx.get(f"{server.url}/metrics", headers=auth).text
    gone = metric(before, "mmtok_requests_total", 'status="disconnected"')
    # Waiting for its image when the client gives up: never run.
    RELEASE.clear()
    with pytest.raises(httpx.TimeoutException):
        chat(server, f"{images}/hold.png", timeout=1.0)
    _wait_for(server, "mmtok_requests_total", 'status="disconnected"', gone + 1)
    RELEASE.set()
    assert chat(server, f"{images}/img.png").status_code == 200
    middle = httpx.get(f"{server.url}/metrics", headers=auth).text
    assert metric(middle, "mmtok_batch_size_sum") - metric(before, "mmtok_batch_size_sum") == 1  # only that one ran
    # Streaming when the client leaves: its row stops at the next step, long before max_tokens (this model never
    # ends an answer early).
    body = {"model": server.model, "messages": user(data_url_of(PICTURE), "What is this?"), "stream": True,
            "max_tokens": 400, "mmtok": {"tokens": 8}}
    with httpx.stream("POST", f"{server.api}/chat/completions", json=body, headers=auth, timeout=60) as reply:
        for line in reply.iter_lines():  # until the first piece of the answer, then hang up
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break
    passes = metric(middle, "mmtok_batch_size_count")
    after = _wait_for(server, "mmtok_batch_size_count", "", passes + 1)  # the pass has ended
    assert metric(after, "mmtok_requests_total", 'status="disconnected"') == gone + 2
    generated = metric(after, "mmtok_completion_tokens_total") - metric(middle, "mmtok_completion_tokens_total")
    assert 1 <= generated < 100


def test_a_stream_that_fails_midway_sends_an_error_event_then_done(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": server.model, "messages": user(data_url_of(PICTURE), "What is this?"),
            "mmtok": {"method": "visionzip"}}  # a Qwen tower has no CLS token: the pass fails for this request
    plain = httpx.post(f"{server.api}/chat/completions", json=body, headers=auth, timeout=60)
    assert plain.status_code == 400 and "CLS" in plain.json()["error"]["message"]
    reply = httpx.post(f"{server.api}/chat/completions", json={**body, "stream": True}, headers=auth, timeout=60)
    events = [line[6:] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert reply.status_code == 200 and events[-1] == "[DONE]" and len(events) == 3
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    error = json.loads(events[1])["error"]
    assert "CLS" in error["message"] and error["type"] == "invalid_request_error"
    client = openai.OpenAI(base_url=server.api, api_key=KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.APIError, match="CLS"):
        list(client.chat.completions.create(model=server.model, messages=body["messages"], stream=True,
                                            extra_body={"mmtok": {"method": "visionzip"}}))


# -- the address check, in process -----------------------------------------------------------------------------------


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False), ("127.0.0.2", False), ("::1", False),
    ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("fe80::1%eth0", False), ("::ffff:127.0.0.1", False), ("100.64.0.1", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("fd00::1", False),
])
def test_public_address(address, public):
    assert public_address(address) is public


def test_private_hosts_are_refused_on_every_redirect_hop(monkeypatch, images):
    # 127.0.0.2 plays a public host here; the redirect it answers leads to 127.0.0.1, which stays private.
    real = mmtok_io.public_address
    monkeypatch.setattr(mmtok_io, "public_address", lambda address: address == "127.0.0.2" or real(address))
    public, url = _start("127.0.0.2")
    redirect = _Redirect.to(f"{images}/img.png")
    ftp = _Redirect.to("ftp://127.0.0.2/img.png")
    try:
        assert fetch_image(f"{url}/img.png", allow_private=False).size == PICTURE.size
        with pytest.raises(RefusedSource, match="127.0.0.1, a loopback, private or link-local address"):
            fetch_image(f"{images}/img.png", allow_private=False)
        hop = f"http://127.0.0.2:{redirect.server_address[1]}/"
        with pytest.raises(RefusedSource, match="127.0.0.1"):
            fetch_image(hop, allow_private=False)
        assert fetch_image(hop).size == PICTURE.size  # `mmtok batch` reads any address
        with pytest.raises(RefusedSource, match="not to an http"):
            fetch_image(f"http://127.0.0.2:{ftp.server_address[1]}/")
    finally:
        for httpd in (public, redirect, ftp):
            httpd.shutdown()


class _Redirect(http.server.BaseHTTPRequestHandler):
    target = ""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", self.target)
        self.end_headers()

    @classmethod
    def to(cls, target: str) -> http.server.ThreadingHTTPServer:
        handler = type("Redirect", (cls,), {"target": target})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.2", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd


def test_the_media_policy_reads_files_only_inside_its_folder(media):
    from mmtok_cli.serve.safety import MediaPolicy

    folder, outside = media
    policy = MediaPolicy(local_root=str(folder))
    assert policy.load(f"file://{folder / 'inside.png'}").size == PICTURE.size
    assert policy.load(f"file://localhost{folder / 'inside.png'}").size == PICTURE.size
    for url in (f"file://{outside}", f"file://{folder / 'link.png'}", f"file://example.com{folder / 'inside.png'}"):
        with pytest.raises(RefusedSource):
            policy.load(url)
    with pytest.raises(RefusedSource, match="--allowed-local-media-path"):
        MediaPolicy().load(f"file://{folder / 'inside.png'}")
    assert Path(folder / "inside.png").exists()
