"""Inputs (images, folders, JSONL, stdin) and outputs (JSONL records, resume).

No torch here: reading and checking input is cheap and happens before any model loads.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import os
import socket
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from .errors import MmtokError, RefusedSource, UsageError
from .video import VIDEO_SUFFIXES, FrameSampling

if TYPE_CHECKING:
    from .engine import Answer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
URL_TIMEOUT_S = 30.0
"""Default deadline for one image download, whole (connect, redirects, body)."""
MAX_DOWNLOAD_BYTES = 50_000_000
MAX_REDIRECTS = 5
MAX_PIXELS = 40_000_000
"""Decoded-size cap per image: 120 MB as RGB (PIL's own bomb error comes only past 179 Mpixel)."""
MAX_SIDE = 4096
"""Images are scaled down to this many pixels on their longest side when decoded: every supported processor
reads fewer, and an image in flight then holds at most 64 MB (PIL keeps 4 bytes a pixel)."""
PIL_BLOCK_BYTES = 64 * 2**20
"""Pillow allocates a large image in blocks of at most this size (its PILLOW_BLOCK_SIZE, 16 MB by default). Blocks
over glibc's largest mmap threshold (32 MB) are mapped and unmapped on their own, so the memory of a large image
goes back to the system when it is let go; 16 MB blocks land in the heap, where a few large images in a row left
the process holding twice what it used (`benchmarks/memory.py`). A PILLOW_BLOCK_SIZE in the environment wins."""
if "PILLOW_BLOCK_SIZE" not in os.environ and Image.core.get_block_size() < PIL_BLOCK_BYTES:
    Image.core.set_block_size(PIL_BLOCK_BYTES)

# Fields every output record has; an input key with one of these names is kept under "input".
RECORD_FIELDS = (
    "id", "image", "question", "answer", "vision_tokens", "prompt_tokens", "timings_ms", "speedup", "error",
)
_OPTIONAL_KEYS = ("id", "tokens", "max_new_tokens")
VISUAL_KEYS = {"image": "image", "images": "image", "video": "video", "videos": "video"}
"""Input keys that name an item's visual inputs, and the kind of each: "image" / "video" one path or URL, "images" /
"videos" a list; an item's inputs are in the order of its keys, each list in its own order."""


Reserve = Callable[[int], None]
"""Called with the bytes an image will take while it decodes, before it does; may block until they are free (the
batch loader's memory bound, `batch.ByteBudget`)."""


def load_image(source: str, *, reserve: Reserve | None = None) -> Image.Image:
    """Open an image file (or '-' for stdin) fully and as RGB, or explain in one line why not."""
    if source == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise MmtokError("no image data on stdin")
        return _decode(io.BytesIO(data), "stdin", reserve=reserve)
    path = Path(source).expanduser()
    if not path.exists():
        raise MmtokError(f"image not found: {source}")
    if path.is_dir():
        raise MmtokError(f"'{source}' is a folder, not an image")
    return _decode(path, source, reserve=reserve)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class _FewRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        # urllib would also follow a redirect to ftp://, which no limit here covers.
        if not is_url(newurl):
            raise RefusedSource(f"{req.full_url} redirects to {newurl.split(':')[0]}:, not to an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def public_address(address: str) -> bool:
    """Whether an IP address is on the public internet: not loopback, private, link-local, shared (CGNAT),
    multicast, reserved or unspecified (an IPv4 address written as IPv6 counts as itself)."""
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 scope (fe80::1%eth0) names the interface only
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _public_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,
                       source_address: Any = None) -> socket.socket:
    """`socket.create_connection` that refuses a host with any non-public address, then connects to the very
    addresses it checked (a second DNS answer cannot swap in a private one)."""
    host, port = address
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    refused = sorted({info[4][0] for info in found if not public_address(info[4][0])})
    if refused:
        raise RefusedSource(f"{host} resolves to {refused[0]}, a loopback, private or link-local address; "
                            "such URLs are refused (the server's --allow-private-urls allows them)")
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in found:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"no address for {host}")


def _guarded(base: type[http.client.HTTPConnection]) -> Any:
    """`base` whose every connection (the first request's and each redirect's) goes through `_public_connection`."""

    def connection(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = base(*args, **kwargs)
        conn._create_connection = _public_connection  # http.client's own hook for how a connection is opened
        return conn

    return connection


class _PublicHTTP(urllib.request.HTTPHandler):
    def http_open(self, req: Any) -> Any:
        return self.do_open(_guarded(http.client.HTTPConnection), req)


class _PublicHTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req: Any) -> Any:
        return self.do_open(_guarded(http.client.HTTPSConnection), req, context=self._context)


def fetch_bytes(
    url: str, timeout: float = URL_TIMEOUT_S, max_bytes: int = MAX_DOWNLOAD_BYTES, *, allow_private: bool = True
) -> bytes:
    """Download an http(s) resource (an image, a video), with one-line errors for every way that fails.

    `timeout` bounds the whole download (connecting, redirects and every byte), not each read, so a
    server that trickles a byte at a time fails within it; the body is capped at `max_bytes` (checked
    against Content-Length first, then while reading) and redirects at MAX_REDIRECTS, each to http(s) only.

    `allow_private=False` (`mmtok serve`'s default) refuses, with `RefusedSource`, a URL whose host, or the host of
    any redirect, resolves to an address that is not public (`public_address`); the connection then goes straight
    to the checked address, so a proxy from the environment is not used.
    """
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "mmtok"})
    guard = [] if allow_private else [urllib.request.ProxyHandler({}), _PublicHTTP, _PublicHTTPS]
    opener = urllib.request.build_opener(_FewRedirects, *guard)
    chunks: list[bytes] = []
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise MmtokError(f"{url} is {int(length) / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB download limit")
            size = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
                if sock is not None:  # a blocked read may not outlive the download's deadline
                    sock.settimeout(left)
                chunk = response.read1(1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise MmtokError(f"{url} sent more than the {max_bytes / 1e6:g} MB download limit")
                chunks.append(chunk)
    except MmtokError:
        raise
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:  # urllib's own message for this spans three lines
            raise MmtokError(f"could not download {url}: more than {MAX_REDIRECTS} redirects") from None
        raise MmtokError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (TimeoutError, socket.timeout):
        raise MmtokError(f"could not download {url}: not complete within {timeout:g} s") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise MmtokError(f"could not download {url}: not complete within {timeout:g} s") from None
        raise MmtokError(f"could not download {url}: {reason}") from None
    data = b"".join(chunks)
    if not data:
        raise MmtokError(f"{url} returned no data")
    return data


def fetch_image(
    url: str, timeout: float = URL_TIMEOUT_S, max_bytes: int = MAX_DOWNLOAD_BYTES, *, allow_private: bool = True,
    reserve: Reserve | None = None,
) -> Image.Image:
    """Download (`fetch_bytes`, `allow_private` there) and decode an http(s) image (`reserve`: see `Reserve`)."""
    data = fetch_bytes(url, timeout, max_bytes, allow_private=allow_private)
    return _decode(io.BytesIO(data), url, reserve=reserve)


def decode_image(data: bytes | Path, name: str) -> Image.Image:
    """Image bytes (or a file) decoded with the same limits as any other image (`name` says which, in errors)."""
    return _decode(io.BytesIO(data) if isinstance(data, bytes) else data, name)


def local_file(
    path: str | Path, root: str | Path, *, max_bytes: int = MAX_DOWNLOAD_BYTES, what: str = "image"
) -> Path:
    """`path` resolved, where it is a regular file at most `max_bytes` long that lies inside `root` once links are
    resolved (`mmtok serve`'s file:// images and videos; `what` names which in errors); anything else is refused with
    `RefusedSource`, or is a one-line MmtokError."""
    real, inside = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if not real.is_relative_to(inside):
        raise RefusedSource(f"{path} is outside the folder the server allows local media from")
    if not real.exists():
        raise MmtokError(f"{what} not found: {path}")
    if not real.is_file():  # a FIFO or a device would hang or never end
        raise RefusedSource(f"{path} is not a regular file")
    if real.stat().st_size > max_bytes:
        raise MmtokError(f"{path} is over the {max_bytes / 1e6:g} MB {what} limit")
    return real


def open_source(
    source: str, base: Path | None = None, *, timeout: float = URL_TIMEOUT_S, reserve: Reserve | None = None
) -> Image.Image:
    """An image from a URL (downloaded within `timeout` seconds), an absolute path, or a path relative to
    `base` (the JSONL file's folder). `reserve`: see `Reserve`."""
    if is_url(source):
        return fetch_image(source, timeout=timeout, reserve=reserve)
    path = Path(source).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return load_image(str(path), reserve=reserve) if path.exists() else _missing(source, path)


def _missing(source: str, path: Path, what: str = "image") -> Any:
    where = "" if str(path) == source else f" (looked at {path})"
    raise MmtokError(f"{what} not found: {source}{where}")


def open_video(
    source: str, base: Path | None = None, *, sampling: FrameSampling | None = None, rule: Any = None,
    timeout: float = URL_TIMEOUT_S,
) -> Any:
    """A video's sampled frames (`video.decode`, `rule`: the family's default choice) from a URL (at most
    `video.MAX_DOWNLOAD_BYTES`, within `timeout` seconds), an absolute path, or a path relative to `base`."""
    from .video import MAX_DOWNLOAD_BYTES as VIDEO_BYTES
    from .video import decode

    if is_url(source):
        data = fetch_bytes(source, timeout=timeout, max_bytes=VIDEO_BYTES)
        return decode(io.BytesIO(data), sampling, default=rule, name=source)
    path = Path(source).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists():
        return _missing(source, path, "video")
    return decode(path, sampling, default=rule, name=source)


def open_visuals(
    sources: list[tuple[str, str]], base: Path | None = None, *, sampling: FrameSampling | None = None,
    rule: Any = None, timeout: float = URL_TIMEOUT_S, reserve: Reserve | None = None,
) -> Any:
    """An item's visual inputs opened in order: one image or video alone, several as a list (`Engine.prepare`).
    `reserve` hears each image's bytes before it decodes (a video's frames are counted once decoded)."""
    opened = [open_video(src, base, sampling=sampling, rule=rule, timeout=timeout) if kind == "video"
              else open_source(src, base, timeout=timeout, reserve=reserve) for kind, src in sources]
    return opened[0] if len(opened) == 1 else opened


def source_fields(sources: list[tuple[str, str]]) -> dict[str, Any]:
    """How a record names an item's inputs, as an input line would: "image" for one image; else "images" and
    "video" / "videos" (in that order)."""
    images = [src for kind, src in sources if kind == "image"]
    videos = [src for kind, src in sources if kind == "video"]
    if len(sources) == 1 and images:
        return {"image": images[0]}
    out: dict[str, Any] = {"images": images} if images else {}
    if videos:
        out.update({"video": videos[0]} if len(videos) == 1 else {"videos": videos})
    return out


def _decode(
    fp: Path | io.BytesIO, name: str, max_pixels: int = MAX_PIXELS, *, reserve: Reserve | None = None
) -> Image.Image:
    """Decode fully, as RGB; images over `max_pixels` are refused from their header, before decoding.

    Images larger than MAX_SIDE on their longest side come back scaled down to it (aspect kept). JPEGs that
    large are decoded at a reduced scale to begin with (libjpeg's DCT scaling, `draft`, never below MAX_SIDE),
    so a huge photo costs a quarter of the memory or less while decoding; the pixel cap applies to the size
    actually decoded. An RGB image is scaled down before it is copied out of the decoder, so decoding holds the
    full-size pixels once, not twice. `reserve` hears what decoding will hold at most (`decode_bytes`) first.
    """
    try:
        with Image.open(fp) as image:
            width, height = image.size
            if max(width, height) >= 2 * MAX_SIDE:  # draft is a no-op for formats other than JPEG
                scale = MAX_SIDE / max(width, height)
                image.draft("RGB", (round(width * scale), round(height * scale)))
                width, height = image.size
            if width * height > max_pixels:
                raise MmtokError(
                    f"'{name}' is {width} x {height} = {width * height / 1e6:.0f} Mpixel, over the "
                    f"{max_pixels / 1e6:g} Mpixel limit; downscale it first"
                )
            if reserve is not None:
                reserve(decode_bytes(width, height, rgb=image.mode == "RGB"))
            image.load()  # decode now: a truncated file fails here, not halfway through the model
            if image.mode == "RGB":  # the same pixels as converting first; the full size is never copied
                _shrink(image)
            rgb = image.convert("RGB")  # a copy that outlives the decoder's file
        _shrink(rgb)
        return rgb
    except MmtokError:
        raise
    except UnidentifiedImageError:
        raise MmtokError(f"'{name}' is not an image PIL can read (unknown or corrupt format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MmtokError(f"'{name}' could not be decoded as an image: {exc}") from None


def _shrink(image: Image.Image) -> None:
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)


def image_bytes(width: int, height: int) -> int:
    """What a decoded RGB image of that size holds (PIL keeps 4 bytes a pixel)."""
    return 4 * width * height


def decode_bytes(width: int, height: int, *, rgb: bool = True) -> int:
    """The most `_decode` holds at once for an image decoded at width x height: the decoded pixels, the RGB copy
    (at full size unless the image is RGB already) and, when scaled down, the smaller copy."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    small = image_bytes(round(width * scale), round(height * scale))
    return image_bytes(width, height) * (1 if rgb else 2) + small * (2 if scale < 1 else 1)


def check_output(path: str | Path, option: str, *, inputs: Iterable[str | Path] = ()) -> Path:
    """An output file path checked before any model loads (every command's outputs go through here).

    Refused, as one-line usage errors: a folder, a missing folder, the same file as one of `inputs` (by inode, so
    links and other spellings count too; no flag overrides that: writing it would destroy the input), and a place
    where the file cannot really be written. That is tried, not asked (`os.access` says yes to root almost
    everywhere, /proc and /sys included): an existing file is opened for appending (nothing is truncated or
    written), otherwise a file is created in the folder and removed again.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{option} '{path}' is a folder; give a file name inside it")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"the folder of {option} '{path}' does not exist (no folder {folder})")
    for source in inputs:
        source = Path(source).expanduser()
        if target.exists() and source.exists() and os.path.samefile(source, target):
            raise UsageError(f"{option} '{path}' is the input file {source}; writing it would destroy the input")
    if target.is_file():
        try:
            with target.open("ab"):
                pass
        except OSError as exc:
            raise UsageError(f"{option} '{path}' cannot be written ({_reason(exc)})") from None
    elif target.exists():  # a device or a pipe (/dev/null, /dev/stdout): opening one may block or have effects
        if not os.access(target, os.W_OK):
            raise UsageError(f"{option} '{path}' cannot be written (permission denied)")
    else:
        _probe_folder(folder, f"{option} '{path}' cannot be written")
    return target


def check_output_folder(path: str | Path, option: str) -> Path:
    """An output folder (created later if only it is missing) in which files can really be created, checked
    before any model loads like `check_output`."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} '{path}' is a file, not a folder")
    if not folder.exists() and not folder.parent.is_dir():
        raise UsageError(f"the folder that would hold {option} '{path}' does not exist (no folder {folder.parent})")
    _probe_folder(folder if folder.exists() else folder.parent, f"{option} '{path}' cannot be written")
    return folder


def _probe_folder(folder: Path, refusal: str) -> None:
    """Create a file in `folder` and remove it, or refuse with `refusal` and the reason."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".mmtok-probe-", dir=folder)
    except OSError as exc:
        raise UsageError(f"{refusal}: no file can be created in {folder} ({_reason(exc)})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class WriteError(MmtokError):
    """An output could not be written while the work ran (a full disk, a removed folder, ...)."""


@contextmanager
def writing(path: str | Path, what: str | None = None) -> Iterator[None]:
    """Turn an OSError while writing `path` into one `WriteError` line naming it (`what`: e.g. "--json")."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader went away: the CLI stops quietly
    except OSError as exc:
        name = f"{what} '{path}'" if what else f"'{path}'"
        inside = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise WriteError(f"cannot write {name}{inside}: {_reason(exc)}") from None


def write_text(path: str | Path, text: str, what: str | None = None) -> None:
    """Write a whole text file (a --json report), with a one-line error when that fails."""
    with writing(path, what):
        Path(path).write_text(text, encoding="utf-8")


@dataclass
class Item:
    """One input line (or folder file): what to ask, or why it cannot be asked."""

    line: int
    """1-based position in the input; the default id."""
    id: Any
    image: str | None = None
    """The item's one image (path or URL); None for an item of several inputs or a video (`sources` has them)."""
    question: str | None = None
    tokens: int | None = None
    max_new_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown input keys, carried through to the output record."""
    error: str | None = None
    picture: Any = None
    """The visual input itself, already decoded (lmms-eval hands over PIL images): an image, a video, or a list of
    them (`Engine.prepare`); `image` / `sources` then only name it."""
    sources: list[tuple[str, str]] = field(default_factory=list)
    """Every visual input as (kind, path or URL) in prompt order, kind "image" or "video"; empty: `image` alone."""

    def visual_sources(self) -> list[tuple[str, str]]:
        return self.sources or ([("image", self.image)] if self.image is not None else [])


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{name}' must be a positive integer (got {json.dumps(value)})")
    return value


def parse_line(
    text: str, line: int, default_question: str | None = None, *, rename: dict[str, str] | None = None
) -> Item:
    """One JSONL line -> Item; a line that cannot be used becomes an Item with `error` set.

    `rename` maps another format's keys onto ours (POPE's text/label/question_id), before anything is read."""
    item = Item(line=line, id=line)
    if line == 1:
        text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as Windows tools write
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        item.error = f"line {line}: not valid JSON ({exc.msg} at column {exc.colno})" if text.strip() else (
            f"line {line}: empty line"
        )
        return item
    if not isinstance(data, dict):
        item.error = f"line {line}: expected a JSON object, got {type(data).__name__}"
        return item
    if rename:
        data = {rename.get(k, k): v for k, v in data.items()}
    item.id = data.get("id", line)
    item.extra = {k: v for k, v in data.items() if k not in ("image", "question", *_OPTIONAL_KEYS)}
    image, question = data.get("image"), data.get("question", default_question)
    try:
        sources = _visual_sources(data)
        if question is None:
            raise ValueError("missing 'question'")
        if not isinstance(question, str):
            raise ValueError(f"'question' must be a string (got {type(question).__name__})")
        if not question.strip():
            raise ValueError("the question is empty")
        item.question = question
        item.image = image if sources == [("image", image)] else None
        item.sources = sources
        if "tokens" in data:
            item.tokens = positive_int(data["tokens"], "tokens")
        if "max_new_tokens" in data:
            item.max_new_tokens = positive_int(data["max_new_tokens"], "max_new_tokens")
    except ValueError as exc:
        item.image = image if isinstance(image, str) else None
        item.question = question if isinstance(question, str) else None
        item.error = f"line {line}: {exc}"
    return item


def _visual_sources(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The line's visual inputs (`VISUAL_KEYS`) as (kind, source), in the order of its keys."""
    sources = []
    for key, value in data.items():
        kind = VISUAL_KEYS.get(key)
        if kind is None:
            continue
        values = value if key.endswith("s") else [value]
        if key.endswith("s") and (not isinstance(value, list) or not value):
            raise ValueError(f"'{key}' must be a non-empty list of paths or URLs")
        for entry in values:
            if not isinstance(entry, str) or not entry.strip():
                raise ValueError(f"'{key}' must hold paths (relative to the JSONL file) or http(s) URLs, "
                                 f"not {json.dumps(entry)}")
            sources.append((kind, entry))
    if not sources:
        raise ValueError("missing 'image' (a path, relative to the JSONL file, or an http(s) URL; or 'images', "
                         "'video', 'videos')")
    return sources


def read_jsonl(stream: Iterable[str], default_question: str | None = None) -> Iterator[Item]:
    """Every line of a JSONL stream as an Item, blank and broken lines included (as errors)."""
    for number, text in enumerate(stream, start=1):
        yield parse_line(text.rstrip("\r\n"), number, default_question)


def folder_items(folder: Path, question: str) -> tuple[list[Item], list[str]]:
    """Items for the images and videos in `folder` (sorted by name), and the names of files skipped as neither."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    items, skipped = [], []
    for p in files:
        suffix = p.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            items.append(Item(line=len(items) + 1, id=p.name, image=p.name, question=question))
        elif suffix in VIDEO_SUFFIXES:
            items.append(Item(line=len(items) + 1, id=p.name, question=question, sources=[("video", p.name)],
                              extra={"video": p.name}))
        else:
            skipped.append(p.name)
    return items, skipped


class InputPlan:
    """What a batch run reads: items (after --resume), how many, and where relative images live."""

    def __init__(self, make_items: Callable[[], Any], total: int | None, base: Path, skipped: int,
                 done: Counter[str], notes: list[str]) -> None:
        self._make_items, self.total, self.base, self.skipped, self.done, self.notes = (
            make_items, total, base, skipped, done, notes)

    def items(self, warn: Callable[[str], None] = lambda message: None) -> Iterator[Item]:
        """The items still to answer: an id's first `done[id]` lines were answered by an earlier run.
        `warn` hears once that the input repeats an id."""
        seen: Counter[str] = Counter()
        warned = False
        for item in self._make_items():
            key = id_key(item.id)
            seen[key] += 1
            if seen[key] == 2 and not warned:
                warn(f"id {key} appears more than once in the input; each line still gets its record "
                     "(--resume counts them in input order)")
                warned = True
            if seen[key] <= self.done[key]:
                continue
            yield item


def plan_inputs(
    source: str, out: str, question: str | None, *, resume: bool, overwrite: bool, retry_errors: bool = False
) -> InputPlan:
    """What a batch run reads and where it writes, checked before the model loads, so mistakes cost milliseconds."""
    if question is not None and not question.strip():
        raise UsageError("--question is empty")
    if out == "-":
        if resume:
            raise UsageError("--resume needs --out FILE (it reads the ids already written there)")
    else:
        target = check_output(out, "--out", inputs=[] if source == "-" else [source])
        if target.exists() and target.stat().st_size and not (resume or overwrite):
            raise UsageError(f"'{out}' already exists; pass --resume to continue it or --overwrite to replace it")
    done = done_ids(Path(out), retry_errors=retry_errors) if resume else Counter()
    notes: list[str] = []
    if source == "-":
        if sys.stdin.isatty():
            raise UsageError("INPUT is '-' but nothing is piped in; pipe JSONL lines into mmtok batch -")
        return InputPlan(lambda: read_jsonl(sys.stdin, question), None, Path.cwd(), done.total(), done, notes)
    path = Path(source).expanduser()
    if path.is_dir():
        if question is None:
            raise UsageError(f"'{source}' is a folder: give the question for its images with --question")
        items, skipped = folder_items(path, question)
        if not items:
            raise UsageError(f"no images or videos in '{source}' (looked for "
                             f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
        if skipped:
            notes.append(f"skipped {len(skipped)} file(s) that are neither images nor videos: "
                         f"{', '.join(skipped[:5])}"
                         + (" …" if len(skipped) > 5 else ""))
        left = sum(1 for it in items if not done[id_key(it.id)])
        return InputPlan(lambda: iter(items), len(items), path, len(items) - left, done, notes)
    if not path.is_file():
        raise UsageError(f"INPUT '{source}' not found (expected a JSONL file, a folder of images or '-')")
    try:
        with path.open("rb") as fp:
            total = sum(1 for _ in fp)
    except OSError as exc:
        raise UsageError(f"cannot read '{source}': {exc.strerror or exc}") from None

    def lines() -> Any:
        with path.open(encoding="utf-8", errors="replace") as fp:
            yield from read_jsonl(fp, question)

    skipped = done.total() if resume else 0
    return InputPlan(lines, total, path.parent, min(skipped, total), done, notes)


def id_key(value: Any) -> str:
    """Ids compare by JSON value, so 7 and "7" stay different."""
    return json.dumps(value, sort_keys=True)


def done_ids(path: Path, *, retry_errors: bool = False) -> Counter[str]:
    """How many records each id (`id_key`) already has in an output file. A torn last line (killed
    mid-write) is cut off. Counts, not a set: an id that the input repeats is done once per record, so
    resuming skips exactly as many of its lines as were answered.

    With `retry_errors`, records that carry an error are removed from the file (rewritten
    atomically) and not counted, so those items run again and are appended. An id with several records
    keeps its error records: which of its lines failed cannot be told from the records, and guessing wrong
    would lose one.
    """
    ids: Counter[str] = Counter()
    if not path.exists():
        return ids
    with path.open("rb+") as fp:
        data = fp.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            fp.truncate(complete)
    records: list[tuple[bytes, str, bool]] = []
    for number, raw in enumerate(data[:complete].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            raise UsageError(f"cannot resume: line {number} of {path} is not a JSON record") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise UsageError(f"cannot resume: line {number} of {path} is not an mmtok record (no 'id')")
        records.append((raw, id_key(rec["id"]), rec.get("error") is not None))
    per_id = Counter(key for _, key, _ in records)
    kept = [(raw, key) for raw, key, failed in records if not (retry_errors and failed and per_id[key] == 1)]
    ids.update(key for _, key in kept)
    if retry_errors and len(kept) < len(records):
        temporary = path.with_name(path.name + ".mmtok-tmp")
        try:
            with writing(path, "--out"):
                temporary.write_bytes(b"".join(raw + b"\n" for raw, _ in kept))
                os.replace(temporary, path)  # atomic: a crash leaves the old file or the new one, never half
        finally:
            temporary.unlink(missing_ok=True)
    return ids


def record(item: Item, result: dict[str, Any] | None, error: str | None = None) -> dict[str, Any]:
    """The output record for one item: fixed fields first, then the carried-through input keys."""
    out: dict[str, Any] = {"id": item.id, "image": item.image, "question": item.question}
    out.update(result or {"answer": None, "vision_tokens": None, "prompt_tokens": None, "timings_ms": None,
                          "speedup": None})
    out["error"] = error if error is not None else item.error
    clashing = {k: v for k, v in item.extra.items() if k in out or k in RECORD_FIELDS or k == "input"}
    out.update({k: v for k, v in item.extra.items() if k not in clashing})
    if clashing:
        out["input"] = clashing
    return out


def answer_fields(answer: Answer, *, load_ms: float | None = None, full: Answer | None = None) -> dict[str, Any]:
    """An answer's fields in an output record (shared by `batch` records and `ask --json`)."""
    timings = dict(answer.timings_ms)
    if load_ms is not None:
        timings["load"] = round(load_ms, 3)
    fields: dict[str, Any] = {
        "answer": answer.answer,
        **({} if answer.agent_answer is None else {"agent_answer": answer.agent_answer}),  # runs with the agent
        "vision_tokens": {
            "total": answer.vision_total, "kept": answer.vision_kept, "cached": answer.vision_cached,
            # per input, for an item of several inputs or a video (one image's are the totals)
            **({"inputs": answer.vision_inputs} if _several(answer.vision_inputs) else {}),
        },
        **({"selection": dict(answer.conventions)} if answer.conventions else {}),  # the conventions that applied
        "prompt_tokens": {"unpruned": answer.prompt_unpruned, "pruned": answer.prompt_pruned},
        "timings_ms": timings,
        "speedup": {"estimated": answer.speedup_estimated, "measured": None},
    }
    if full is not None:
        pruned_ms, full_ms = answer.timings_ms["total"], full.timings_ms["total"]
        fields["speedup"]["measured"] = round(full_ms / pruned_ms, 3) if pruned_ms > 0 else None
        fields["compare"] = {
            "answer": full.answer, "agree": full.answer == answer.answer, "timings_ms": full.timings_ms,
        }
    return fields


def _several(inputs: list[dict[str, Any]]) -> bool:
    return len(inputs) > 1 or any(entry["kind"] == "video" for entry in inputs)


class RecordWriter:
    """Writes whole JSONL lines and flushes after each group, so an interruption never tears a line.

    A group that cannot be written (a full disk) is taken back out of the file, so the file keeps only whole
    records and `--resume` continues from them; `stopped` says so in one line.
    """

    def __init__(self, target: str, *, append: bool, option: str | None = None) -> None:
        """`option`: the flag that named `target` (e.g. --predictions), for messages."""
        self.to_stdout = target == "-"
        self.name, self.option = "stdout" if self.to_stdout else target, option
        self.written = 0
        """Records of this run that are complete in the output."""
        with writing(target, option):
            self.fp: IO[Any] = sys.stdout if self.to_stdout else open(target, "ab" if append else "wb", buffering=0)
        self.regular = not self.to_stdout and stat.S_ISREG(os.fstat(self.fp.fileno()).st_mode)
        self.end = self.fp.tell() if self.regular else 0
        """Where the last whole record ends."""

    def write(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in records)
        if self.to_stdout:
            try:
                self.fp.write(text)
                self.fp.flush()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise WriteError(f"cannot write the records to stdout: {_reason(exc)}") from None
        else:
            with writing(self.name, self.option):
                self._write_file(text.encode("utf-8"))
        self.written += len(records)

    def _write_file(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:  # unbuffered: a short write is not an error yet, the next one says why
                view = view[self.fp.write(view) :]
            if self.regular:  # fsync means nothing to a device (/dev/null refuses it)
                os.fsync(self.fp.fileno())
        except OSError:
            if self.regular:
                try:  # take the torn group back out, so only whole records stay
                    os.ftruncate(self.fp.fileno(), self.end)
                except OSError:
                    pass  # done_ids cuts a torn last line when resuming
            raise
        self.end += len(data)

    def stopped(self, exc: MmtokError) -> MmtokError:
        """`exc` (a write that failed mid-run) with what is safe and how to go on, in one line."""
        total = self._records_in_file()
        if total is None:  # stdout or a device: nothing to resume from
            return MmtokError(f"{exc}; {self.written} records went to {self.name} before it")
        before = f" ({total - self.written} from before this run)" if total > self.written else ""
        return MmtokError(f"{exc}; {self.name} keeps {total} complete records{before}: make room and rerun with "
                          "--resume to continue")

    def _records_in_file(self) -> int | None:
        if not self.regular:
            return None
        try:
            with open(self.name, "rb") as fp:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: fp.read(1 << 20), b""))
        except OSError:
            return None

    def close(self) -> None:
        if not self.to_stdout:
            self.fp.close()
