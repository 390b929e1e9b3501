"""The SDK's frame reader: video files and folders of frames, forward and backward, as the server sees pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3_client import video
from sam3_client.video import FrameFolder, VideoError, open_frames
from sam3_core.images import load_image
from videos import frame_number, moving_shapes, numbered_frames, write_video

COUNT = 23  # not a multiple of the keyframe interval nor of the backward window


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "numbered.mp4", numbered_frames(COUNT))


def numbers(frames: video.Frames, indices: range) -> list[tuple[int, int]]:
    return [(index, frame_number(rgb)) for index, rgb in frames.read(indices)]


def test_a_video_is_numbered_in_presentation_order_and_reads_forward(mp4: Path) -> None:
    with open_frames(mp4) as frames:
        assert (len(frames), frames.width, frames.height, frames.fps) == (COUNT, 48, 32, 10.0)
        assert numbers(frames, range(COUNT)) == [(i, i) for i in range(COUNT)]
        assert numbers(frames, range(9, 14)) == [(i, i) for i in range(9, 14)]  # from the middle of a GOP
        first = frames.frame(0)
        assert first.dtype == np.uint8 and first.shape == (32, 48, 3) and first.flags.c_contiguous


@pytest.mark.parametrize("window", [1, 5, 16, 64])
def test_a_video_reads_backward_window_by_window(mp4: Path, window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "BACKWARD_WINDOW_BYTES", window * 48 * 32 * 3)
    with open_frames(mp4) as frames:
        assert numbers(frames, range(COUNT - 1, -1, -1)) == [(i, i) for i in reversed(range(COUNT))]
        assert numbers(frames, range(17, 5, -1)) == [(i, i) for i in range(17, 5, -1)]


def test_a_lossless_video_gives_back_the_pixels_it_was_given(tmp_path: Path) -> None:
    shapes = moving_shapes(6)
    with open_frames(write_video(tmp_path / "shapes.mkv", shapes, codec="ffv1")) as frames:
        for (index, rgb), expected in zip(frames.read(range(6)), shapes, strict=True):
            assert np.array_equal(rgb, expected), index


def test_a_rotated_video_is_read_as_shown(tmp_path: Path) -> None:
    """A phone's portrait video: stored landscape, with a display rotation. The red square at the top left
    of the stored picture is at the bottom left once turned 90 degrees counter-clockwise."""
    shapes = moving_shapes(3)
    with open_frames(write_video(tmp_path / "turned.mp4", shapes, rotation=90)) as frames:
        assert (frames.width, frames.height) == (48, 64)
        shown = frames.frame(0)
        assert np.abs(shown.astype(int) - np.rot90(shapes[0]).astype(int)).max() < 12
        assert shown[64 - 8, 10, 0] > 200 and shown[8, 10, 0] < 150


def test_reads_outside_the_video_or_by_leaps_are_refused(mp4: Path) -> None:
    with open_frames(mp4) as frames:
        with pytest.raises(IndexError, match=r"frames 20\.\.23 are outside 0\.\.22"):
            next(frames.read(range(20, 24)))
        with pytest.raises(ValueError, match="not with step 2"):
            next(frames.read(range(0, 10, 2)))


def save(rgb: np.ndarray | Image.Image, path: Path, **options: object) -> Path:
    image = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def test_a_folder_is_sorted_with_numbers_as_numbers_and_ignores_other_files(tmp_path: Path) -> None:
    grey = numbered_frames(12)
    for i in range(12):
        save(grey[i], tmp_path / "clip" / f"frame{i}{'.png' if i % 2 else '.JPG'}", quality=95)
    (tmp_path / "clip" / "notes.txt").write_text("not a frame")
    with open_frames(tmp_path / "clip") as frames:
        assert isinstance(frames, FrameFolder) and frames.fps is None
        assert frames.name(10) == "frame10.JPG"
        assert numbers(frames, range(11, -1, -1)) == [(i, i) for i in reversed(range(12))]


def test_folder_frames_are_the_pixels_the_server_decodes(tmp_path: Path) -> None:
    """Transparency onto white, palettes, greyscale and EXIF orientation, as sam3_core.images decodes an upload."""
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (16, 24, 4), dtype=np.uint8)
    oriented = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    exif = oriented.getexif()
    exif[0x0112] = 6  # stored landscape, shown turned: 16 wide, 24 tall
    files = [
        save(Image.fromarray(rgba).rotate(90, expand=True), tmp_path / "a" / "0.png"),
        save(Image.fromarray(rgba[..., 0]).rotate(90, expand=True), tmp_path / "a" / "1.png"),
        save(Image.fromarray(rgba[..., :3]).rotate(90, expand=True).quantize(8), tmp_path / "a" / "2.png"),
        save(oriented, tmp_path / "a" / "3.jpg", exif=exif.tobytes(), quality=90),
    ]
    with open_frames(tmp_path / "a") as frames:
        assert (frames.width, frames.height) == (16, 24)
        for (_, rgb), file in zip(frames.read(range(len(files))), files, strict=True):
            assert np.array_equal(rgb, load_image(file)), file.name


def test_unreadable_sources_name_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match=r"empty: no \.png, \.jpg, \.jpeg frames in this folder"):
        open_frames(tmp_path / "empty")
    with pytest.raises(VideoError, match=r"missing\.mp4: no such file or folder"):
        open_frames(tmp_path / "missing.mp4")
    save(np.zeros((4, 4), np.uint16), tmp_path / "deep" / "0.png")
    with pytest.raises(VideoError, match=r"0\.png: I;16 frames \(16-bit or float\) are not read; save 8-bit frames"):
        open_frames(tmp_path / "deep")
    save(np.zeros((4, 4, 3), np.uint8), tmp_path / "broken" / "0.png").write_bytes(b"nope")
    with pytest.raises(VideoError, match=r"0\.png: cannot read it as an image"):
        open_frames(tmp_path / "broken")
    (tmp_path / "noise.mp4").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(VideoError, match=r"noise\.mp4: not a video FFmpeg can read"):
        open_frames(tmp_path / "noise.mp4")


def test_a_frame_of_another_size_is_named(tmp_path: Path) -> None:
    save(np.zeros((8, 8, 3), np.uint8), tmp_path / "0.png")
    save(np.zeros((8, 9, 3), np.uint8), tmp_path / "1.png")
    with open_frames(tmp_path) as frames, pytest.raises(VideoError, match=r"1\.png is 9x8, 0\.png 8x8: every frame"):
        list(frames.read(range(2)))


def test_a_file_with_no_video_stream_is_named(tmp_path: Path) -> None:
    import av

    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match="has no video stream"):
        open_frames(path)
