"""In-memory decoders of shard members agree with the general ones they stand in for; atomic writes' file modes."""
import io
import subprocess
import sys

import cv2
import numpy as np
import pyarrow as pa
import pytest

from handloom.io import ParquetStream, decode_gray_png, decode_image, encode_png, load_npy, umask, write_bytes


def png(image: np.ndarray, compression: int = 1) -> bytes:
    return cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, compression])[1].tobytes()


@pytest.mark.parametrize("compression", [0, 1, 9])
def test_gray_png_decodes_as_opencv_does(compression):
    rng = np.random.default_rng(compression)
    mask = cv2.circle(np.zeros((96, 80), np.uint8), (40, 50), 30, 255, -1)
    noise = rng.integers(0, 256, (33, 47), dtype=np.uint8)  # every byte value, odd sizes
    for image in (mask, noise, np.zeros((1, 1), np.uint8)):
        data = png(image, compression)
        np.testing.assert_array_equal(decode_gray_png(data), image)
        np.testing.assert_array_equal(decode_gray_png(data), decode_image(data, gray=True))


def test_other_pngs_and_broken_bytes_fall_back():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    data = encode_png(rgb)
    np.testing.assert_array_equal(decode_gray_png(data), decode_image(data, gray=True))
    deep = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    np.testing.assert_array_equal(decode_gray_png(png(deep)), decode_image(png(deep), gray=True))
    assert decode_gray_png(png(np.zeros((8, 8), np.uint8))[:40]) is None
    assert decode_gray_png(b"") is None


@pytest.mark.parametrize("array", [np.arange(126, dtype=np.float32).reshape(42, 3), np.arange(12).reshape(3, 4),
                                   np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.zeros((0, 3), np.float32),
                                   np.float64(2.5)])
def test_load_npy_reads_what_np_save_wrote(array):
    f = io.BytesIO()
    np.save(f, array)
    out = load_npy(f.getvalue())
    assert out.dtype == array.dtype and out.shape == np.shape(array) and out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_atomic_writes_get_the_mode_open_gives(tmp_path):
    """mkstemp makes its files 0600: renamed into place, every output (tars, PNGs of `handloom generate`) would be
    private to its writer. They get 0666 less the umask, as open() gives; checked under two umasks."""
    write_bytes(tmp_path / "a.bin", b"x")
    with ParquetStream(tmp_path / "t.parquet", pa.schema([("key", pa.string())])) as stream:
        stream.write_rows([{"key": "a"}])
    for name in ("a.bin", "t.parquet"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask()
    script = f"from handloom.io import write_bytes; write_bytes({str(tmp_path / 'b.bin')!r}, b'x')"
    subprocess.run(["sh", "-c", f"umask 027 && {sys.executable} -c \"{script}\""], check=True)
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o640
