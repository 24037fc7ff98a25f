"""A real `mmtok serve` in a subprocess for the server's tests (one per test module), and small helpers."""

import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"


class Served:
    """`mmtok serve ARGS` on 127.0.0.1 (a free port unless `port` is given), ready once /health says 200.
    `stop()` ends it; its stderr is in `log()`."""

    def __init__(self, *args: str, port: int = 0, ready: str | None = None, timeout: float = 240.0,
                 api_key: str | None = None) -> None:
        self._log = tempfile.NamedTemporaryFile("w+", prefix="mmtok-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmtok_cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, env={**os.environ},
        )
        self.model = args[args.index("--model") + 1] if "--model" in args else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        deadline = time.monotonic() + timeout
        self.url = None
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mmtok serve exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mmtok serve was not ready within {timeout:g} s:\n{self.log()}")
                found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", self.log())
                if found and (ready is None or ready in self.log()):
                    self.url = found.group(1)
                    try:
                        if httpx.get(f"{self.url}/health", headers=headers, timeout=5).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return Path(self._log.name).read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_url(path: Path | str) -> str:
    data = Path(path).read_bytes()
    kind = "jpeg" if str(path).endswith((".jpg", ".jpeg")) else "png"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def user(url: str, question: str) -> list[dict]:
    """One user message: the image, then the question (what `mmtok ask` prompts)."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def metric(text: str, name: str, labels: str = "") -> float:
    """A sample's value in Prometheus text (0 when absent)."""
    found = re.search(rf"^{re.escape(name)}{re.escape('{' + labels + '}' if labels else '')} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
