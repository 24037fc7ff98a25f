"""Videos: a file's frames, sampled and decoded, with their real timing for the processor.

No torch here (like io.py): a video is opened and checked before any model loads. Decoding is PyAV's
(FFmpeg, the decoder transformers' own `load_video` uses by default). Which frames to read is decided from the
file's header alone (`FrameSampling`, with the family's own rule as the default: `Engine.video_sampling`), and only
those frames are decoded: the reader seeks to the key frame before each one that is far ahead, so a long or
high-resolution file costs what its sampled frames cost (transformers' `read_video_pyav` decodes every frame up
to the last one sampled). The frames go to the processor with their timing (the file's fps, total frame count and
the sampled frames' indices: transformers' `VideoMetadata`), as transformers' own loading hands them over.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MmtokError, UsageError

if TYPE_CHECKING:  # the CLI reads this module's options before the ML stack (numpy included) loads
    import numpy as np

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
MAX_FRAMES = 32
"""Default --max-frames: at most this many frames are sampled from a video (16 frames of Qwen2.5-VL at 448 px are
about 2,000 vision tokens)."""
MAX_SIDE = 1920
"""Frames larger than this on their longest side are scaled down to it while decoding (the video processors read
fewer pixels; a 4K frame would cost 25 MB in memory)."""
MAX_FRAME_PIXELS = 40_000_000
"""A video whose frames are larger than this (width x height) is refused from its header, before decoding."""
MAX_DOWNLOAD_BYTES = 200_000_000
"""Byte cap of one video URL."""
SEEK_AHEAD_S = 2.0
"""A sampled frame more than this many seconds after the last decoded one is reached by seeking to the key frame
before it; nearer ones by decoding on (most files have a key frame every 0.5-10 s)."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file's header says: enough to choose frames before decoding any."""

    total_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.total_frames / self.fps if self.fps else 0.0


@dataclass(eq=False)
class Video:
    """A video's sampled frames, in order, with their timing."""

    frames: np.ndarray
    """(T, H, W, 3) uint8 RGB."""
    indices: list[int]
    """Each frame's index in the file."""
    info: VideoInfo
    source: str = ""
    decode_ms: float = field(default=0.0, compare=False)

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def released(self) -> Video:
        """This video without its pixels (`Prepared.drop_images`): frames of the same shape that hold no memory,
        its frame indices and timing kept."""
        import numpy as np

        return replace(self, frames=np.broadcast_to(np.zeros((), np.uint8), self.frames.shape))

    def metadata(self) -> dict[str, Any]:
        """transformers' `VideoMetadata` fields for the processor: the file's fps and frame count, and which frames
        these are (Qwen2.5-VL's `second_per_grid_ts` and Qwen3-VL's timestamps come from them)."""
        return {
            "total_num_frames": self.info.total_frames, "fps": self.info.fps, "width": self.width,
            "height": self.height, "duration": self.info.duration, "video_backend": "pyav",
            "frames_indices": list(self.indices),
        }


def is_video(value: Any) -> bool:
    return isinstance(value, Video)


def looks_like_video(source: str) -> bool:
    """A path or URL whose name ends like a video file (the rest are read as images)."""
    name = source.split("?", 1)[0].split("#", 1)[0]
    return name.lower().endswith(VIDEO_SUFFIXES)


@dataclass(frozen=True)
class FrameSampling:
    """Which frames to read: `frames` evenly spaced, or `fps` per second, or (neither) the family's default rule;
    never more than `max_frames` (`--frames`, `--fps`, `--max-frames`)."""

    frames: int | None = None
    fps: float | None = None
    max_frames: int = MAX_FRAMES

    def check(self) -> FrameSampling:
        if self.frames is not None and self.fps is not None:
            raise UsageError("--frames and --fps both choose the frames; give one of them")
        if self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be at least 1 (got {self.frames})")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise UsageError(f"--fps must be a number above 0 (got {self.fps})")
        if self.max_frames < 1:
            raise UsageError(f"--max-frames must be at least 1 (got {self.max_frames})")
        if self.frames is not None and self.frames > self.max_frames:
            raise UsageError(f"--frames {self.frames} is over --max-frames {self.max_frames}; raise --max-frames too")
        return self

    def indices(self, info: VideoInfo, default: Callable[[VideoInfo], list[int]] | None = None) -> list[int]:
        """The frames to read from a file with `info`: evenly spaced ones (frame i * total // count, as transformers'
        `default_sample_indices_fn`), all of them when the file has no more than asked; `default` (the family's
        rule) when neither --frames nor --fps is given, else every frame; capped at `max_frames` either way."""
        total = info.total_frames
        if self.frames is not None:
            count = self.frames
        elif self.fps is not None:
            count = max(1, int(total / info.fps * self.fps)) if info.fps else total
        elif default is not None:
            picked = sorted({int(i) for i in default(info) if 0 <= int(i) < total})
            if picked and len(picked) <= self.max_frames:
                return picked
            count = len(picked) or total
        else:
            count = total
        count = min(count, total, self.max_frames)
        return [i * total // count for i in range(count)]


def probe(source: str | Path | io.BytesIO, name: str | None = None) -> VideoInfo:
    """A video's header (frame count, fps, frame size), or a one-line MmtokError: unreadable, no video stream,
    frames too large."""
    name = name or str(source)
    with _open(source, name) as container:
        return _info(container, name)


def decode(
    source: str | Path | io.BytesIO, sampling: FrameSampling | None = None, *,
    default: Callable[[VideoInfo], list[int]] | None = None, name: str | None = None,
) -> Video:
    """Decode the frames `sampling` picks (with `default`, the family's rule; see `FrameSampling.indices`) and only
    those."""
    import time

    sampling = sampling or FrameSampling()
    name = name or str(source)
    start = time.perf_counter()
    with _open(source, name) as container:
        info = _info(container, name)
        indices = sampling.indices(info, default)
        frames = _read(container, info, indices, name)
    return Video(frames=frames, indices=indices, info=info, source=name,
                 decode_ms=(time.perf_counter() - start) * 1e3)


def _open(source: str | Path | io.BytesIO, name: str) -> Any:
    try:
        import av
    except ImportError:
        raise MmtokError("reading videos needs PyAV: pip install 'mmtok-cli[video]'") from None
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise MmtokError(f"video not found: {name}")
        if path.is_dir():
            raise MmtokError(f"'{name}' is a folder, not a video")
        if path.stat().st_size == 0:
            raise MmtokError(f"'{name}' is empty")
        source = str(path)
    try:
        return av.open(source, metadata_errors="ignore")
    except Exception as exc:  # noqa: BLE001 -- FFmpeg raises a dozen error classes for unreadable files
        raise MmtokError(f"'{name}' could not be opened as a video: {_reason(exc)}") from None


def _info(container: Any, name: str) -> VideoInfo:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise MmtokError(f"'{name}' has no video stream (it has: {', '.join(kinds)})")
    stream = container.streams.video[0]
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if width * height > MAX_FRAME_PIXELS:
        raise MmtokError(f"'{name}' has frames of {width} x {height} = {width * height / 1e6:.0f} Mpixel, over the "
                         f"{MAX_FRAME_PIXELS / 1e6:g} Mpixel limit; downscale it first")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    total = int(stream.frames or 0)
    if not total:  # containers without a frame count (webm, mkv): from the duration, else by counting packets
        seconds = (float(stream.duration * stream.time_base) if stream.duration else
                   container.duration / 1e6 if container.duration else 0.0)
        total = round(seconds * fps) if seconds and fps else 0
        if not total:
            try:
                total = sum(1 for packet in container.demux(stream) if packet.size)
            except Exception as exc:  # noqa: BLE001
                raise MmtokError(f"'{name}' could not be decoded as a video: {_reason(exc)}") from None
            container.seek(0)
    if not total or not width or not height:
        raise MmtokError(f"'{name}' holds no video frames")
    return VideoInfo(total_frames=total, fps=fps or 1.0, width=width, height=height)


def _read(container: Any, info: VideoInfo, indices: list[int], name: str) -> np.ndarray:
    """The frames at `indices` (ascending), decoding from the key frame before each far one, scaled to MAX_SIDE."""
    import numpy as np

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    base = stream.start_time or 0
    scale = min(1.0, MAX_SIDE / max(info.width, info.height))
    size = {"width": max(1, round(info.width * scale)), "height": max(1, round(info.height * scale))}
    gap = max(1, round(SEEK_AHEAD_S * info.fps))
    frames: list[np.ndarray] = []
    frame_iter = None
    position = -1  # index of the last decoded frame
    last = None
    try:
        for target in indices:
            if frame_iter is None or target - position > gap:
                if stream.time_base and target > 0:
                    container.seek(base + int(target / info.fps / stream.time_base), stream=stream, backward=True)
                frame_iter = container.decode(stream)
                position = -1
            got = None
            if last is not None and position >= target:  # the last frame already is (or passed) this one
                got = last
            for frame in frame_iter:
                position = _index(frame, base, info.fps, stream.time_base, position)
                last = frame
                if position >= target:
                    got = frame
                    break
            if got is None:
                if last is None:
                    raise MmtokError(f"'{name}' could not be decoded as a video: no frame could be read")
                got = last  # the header counted more frames than the stream holds: the last one stands in
            frames.append(got.to_ndarray(format="rgb24", **(size if scale < 1 else {})))
    except MmtokError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise MmtokError(f"'{name}' could not be decoded as a video: {_reason(exc)}") from None
    return np.stack(frames)


def _index(frame: Any, base: int, fps: float, time_base: Any, previous: int) -> int:
    """A decoded frame's index in the file: from its timestamp, or one after the previous frame where it has none."""
    if frame.pts is None or not time_base:
        return previous + 1
    return round(float((frame.pts - base) * time_base) * fps)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
