"""Reading videos: only the sampled frames, exactly those of a full decode, with one-line errors for bad files.
PyAV only (no model): skipped without it."""

import importlib.util

import numpy as np
import pytest

from mmtok_cli.errors import MmtokError
from mmtok_cli.video import FrameSampling, decode

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="videos are decoded with PyAV")


def write_video(path, frames=8, size=(128, 96), fps=4, seed=0):
    """An mp4 of `frames` noise frames (every one a key frame, so each decodes alike however it is reached)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def all_frames(path):
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# -- decoding -----------------------------------------------------------------------------------------------------


def test_decode_reads_exactly_the_sampled_frames(tmp_path):
    path = write_video(tmp_path / "long.mp4", frames=30, fps=10)
    every = all_frames(path)
    for sampling, want in [
        (FrameSampling(frames=5), [0, 6, 12, 18, 24]),  # evenly spaced: i * total // count
        (FrameSampling(frames=30), list(range(30))),  # all of them when the file has N
        (FrameSampling(frames=40, max_frames=64), list(range(30))),  # never more than the file has
        (FrameSampling(fps=2.0), [0, 5, 10, 15, 20, 25]),  # 3 s at 2 frames per second
        (FrameSampling(max_frames=3), [0, 10, 20]),  # no rule: every frame, capped
    ]:
        video = decode(path, sampling)
        assert video.indices == want, sampling
        assert np.array_equal(video.frames, every[want])
        assert video.metadata()["frames_indices"] == want and video.metadata()["fps"] == 10.0
    rule = decode(path, FrameSampling(max_frames=4), default=lambda info: list(range(0, info.total_frames, 2)))
    assert rule.indices == [0, 7, 15, 22]  # the family's rule picked 15 frames: over the cap, evenly spaced instead


def test_decode_seeks_far_frames_of_a_long_file(tmp_path):
    """Key frames every 50 frames: the frames reached by seeking are exactly those of a full decode."""
    import av

    path = tmp_path / "gop.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "50", "bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(300):
            pixels = np.zeros((48, 64, 3), np.uint8)
            pixels[..., 0], pixels[(i * 3) % 48, :, 1], pixels[:, (i * 7) % 64, 2] = i % 256, 255, 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    video = decode(path, FrameSampling(frames=6))
    assert video.indices == [0, 50, 100, 150, 200, 250]
    assert np.array_equal(video.frames, all_frames(path)[video.indices])


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "audio", "folder"])
def test_bad_videos_get_one_line_errors(tmp_path, case):
    import av

    path = tmp_path / "bad.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "corrupt":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    elif case == "audio":
        with av.open(str(path), "w") as container:
            stream = container.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
            container.mux(stream.encode())
    elif case == "folder":
        path.mkdir()
    with pytest.raises(MmtokError) as info:
        decode(path)
    message = str(info.value)
    assert "\n" not in message and "bad.mp4" in message
    if case == "audio":
        assert "no video stream" in message and "audio" in message


def test_frames_over_the_size_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    from mmtok_cli import video as video_module

    path = write_video(tmp_path / "big.mp4", frames=2)
    monkeypatch.setattr(video_module, "MAX_FRAME_PIXELS", 128 * 96 - 1)
    with pytest.raises(MmtokError, match="Mpixel limit"):
        decode(path)


@pytest.mark.parametrize("bad", [FrameSampling(frames=0), FrameSampling(fps=0), FrameSampling(frames=4, fps=1.0),
                                 FrameSampling(max_frames=0), FrameSampling(frames=40, max_frames=32)])
def test_bad_sampling_options_are_usage_errors(bad):
    from mmtok_cli.errors import UsageError

    with pytest.raises(UsageError):
        bad.check()
