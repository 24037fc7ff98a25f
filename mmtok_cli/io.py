"""Inputs (images, folders, JSONL, stdin) and outputs (JSONL records, resume).

No torch here: reading and checking input is cheap and happens before any model loads.
"""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from .errors import MmtokError, UsageError

if TYPE_CHECKING:
    from .engine import Answer

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
URL_TIMEOUT_S = 30.0

# Fields every output record has; an input key with one of these names is kept under "input".
RECORD_FIELDS = (
    "id", "image", "question", "answer", "vision_tokens", "prompt_tokens", "timings_ms", "speedup", "error",
)
_OPTIONAL_KEYS = ("id", "tokens", "max_new_tokens")


def load_image(source: str) -> Image.Image:
    """Open an image file (or '-' for stdin) fully and as RGB, or explain in one line why not."""
    if source == "-":
        data = sys.stdin.buffer.read()
        if not data:
            raise MmtokError("no image data on stdin")
        return _decode(io.BytesIO(data), "stdin")
    path = Path(source).expanduser()
    if not path.exists():
        raise MmtokError(f"image not found: {source}")
    if path.is_dir():
        raise MmtokError(f"'{source}' is a folder, not an image")
    return _decode(path, source)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def fetch_image(url: str, timeout: float = URL_TIMEOUT_S) -> Image.Image:
    """Download and decode an http(s) image, with one-line errors for every way that fails."""
    request = urllib.request.Request(url, headers={"User-Agent": "mmtok"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        raise MmtokError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MmtokError(f"could not download {url}: {reason}") from None
    if not data:
        raise MmtokError(f"{url} returned no data")
    return _decode(io.BytesIO(data), url)


def open_source(source: str, base: Path | None = None) -> Image.Image:
    """An image from a URL, an absolute path, or a path relative to `base` (the JSONL file's folder)."""
    if is_url(source):
        return fetch_image(source)
    path = Path(source).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return load_image(str(path)) if path.exists() else _missing(source, path)


def _missing(source: str, path: Path) -> Image.Image:
    where = "" if str(path) == source else f" (looked at {path})"
    raise MmtokError(f"image not found: {source}{where}")


def _decode(fp: Path | io.BytesIO, name: str) -> Image.Image:
    try:
        with Image.open(fp) as image:
            image.load()  # decode now: a truncated file fails here, not halfway through the model
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise MmtokError(f"'{name}' is not an image PIL can read (unknown or corrupt format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MmtokError(f"'{name}' could not be decoded as an image: {exc}") from None


@dataclass
class Item:
    """One input line (or folder file): what to ask, or why it cannot be asked."""

    line: int
    """1-based position in the input; the default id."""
    id: Any
    image: str | None = None
    question: str | None = None
    tokens: int | None = None
    max_new_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Unknown input keys, carried through to the output record."""
    error: str | None = None
    picture: Image.Image | None = None
    """The image itself, already decoded (lmms-eval hands over PIL images); `image` then only names it."""


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{name}' must be a positive integer (got {json.dumps(value)})")
    return value


def parse_line(
    text: str, line: int, default_question: str | None = None, *, rename: dict[str, str] | None = None
) -> Item:
    """One JSONL line -> Item; a line that cannot be used becomes an Item with `error` set.

    `rename` maps another format's keys onto ours (POPE's text/label/question_id), before anything is read."""
    item = Item(line=line, id=line)
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
        if not isinstance(image, str) or not image.strip():
            raise ValueError("missing 'image' (a path, relative to the JSONL file, or an http(s) URL)")
        if question is None:
            raise ValueError("missing 'question'")
        if not isinstance(question, str):
            raise ValueError(f"'question' must be a string (got {type(question).__name__})")
        if not question.strip():
            raise ValueError("the question is empty")
        item.image, item.question = image, question
        if "tokens" in data:
            item.tokens = _positive_int(data["tokens"], "tokens")
        if "max_new_tokens" in data:
            item.max_new_tokens = _positive_int(data["max_new_tokens"], "max_new_tokens")
    except ValueError as exc:
        item.image = image if isinstance(image, str) else None
        item.question = question if isinstance(question, str) else None
        item.error = f"line {line}: {exc}"
    return item


def read_jsonl(stream: Iterable[str], default_question: str | None = None) -> Iterator[Item]:
    """Every line of a JSONL stream as an Item, blank and broken lines included (as errors)."""
    for number, text in enumerate(stream, start=1):
        yield parse_line(text.rstrip("\r\n"), number, default_question)


def folder_items(folder: Path, question: str) -> tuple[list[Item], list[str]]:
    """Items for the images in `folder` (sorted by name), and the names of files skipped as non-images."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    return [Item(line=i, id=p.name, image=p.name, question=question) for i, p in enumerate(images, 1)], skipped


def id_key(value: Any) -> str:
    """Ids compare by JSON value, so 7 and "7" stay different."""
    return json.dumps(value, sort_keys=True)


def done_ids(path: Path, *, retry_errors: bool = False) -> set[str]:
    """Ids already written to an output file. A torn last line (killed mid-write) is cut off.

    With `retry_errors`, records that carry an error are removed from the file (rewritten
    atomically) and their ids are not returned, so those items run again and are appended.
    """
    if not path.exists():
        return set()
    ids: set[str] = set()
    kept: list[bytes] = []
    with path.open("rb+") as fp:
        data = fp.read()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            fp.truncate(complete)
    for number, raw in enumerate(data[:complete].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            raise UsageError(f"cannot resume: line {number} of {path} is not a JSON record") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise UsageError(f"cannot resume: line {number} of {path} is not an mmtok record (no 'id')")
        if retry_errors and rec.get("error") is not None:
            continue
        ids.add(id_key(rec["id"]))
        kept.append(raw)
    if retry_errors and len(kept) < len(data[:complete].splitlines()):
        temporary = path.with_name(path.name + ".mmtok-tmp")
        temporary.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(temporary, path)  # atomic: a crash leaves the old file or the new one, never half
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
        "vision_tokens": {"total": answer.vision_total, "kept": answer.vision_kept},
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


class RecordWriter:
    """Writes whole JSONL lines and flushes after each group, so an interruption never tears a line."""

    def __init__(self, target: str, *, append: bool) -> None:
        self.to_stdout = target == "-"
        self.fp: IO[str] = sys.stdout if self.to_stdout else open(target, "a" if append else "w", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        if records:
            self.fp.write("".join(json.dumps(r) + "\n" for r in records))
        self.fp.flush()
        if not self.to_stdout:
            os.fsync(self.fp.fileno())

    def close(self) -> None:
        if not self.to_stdout:
            self.fp.close()
