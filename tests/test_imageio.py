"""Bad and unusual image files: each is rejected with a stable error type, or converted to RGB correctly."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from detection.datasets.imageio import ImageError, ImageLimits, decode_image, header_size


def _save(path, img, fmt=None, **kw):
    img.save(path, fmt, **kw)
    return path


def _error_type(path, limits=None):
    with pytest.raises(ImageError) as info:
        decode_image(path, limits)
    assert str(path) in str(info.value)              # the message names the file
    return info.value.error_type


def test_rgb_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    img = decode_image(_save(tmp_path / "a.png", Image.fromarray(arr)))
    assert img.rgb.dtype == np.uint8 and img.rgb.shape == (20, 30, 3)
    assert np.array_equal(img.rgb, arr) and img.mode == "RGB" and len(img.sha256) == 64


def test_bad_files_have_error_types(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)).save(good, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)).save(png, "PNG")
    (tmp_path / "truncated.png").write_bytes(png.getvalue()[:-200])
    assert _error_type(tmp_path / "missing.png") == "missing_file"
    assert _error_type(tmp_path / "empty.jpg") == "empty_file"
    assert _error_type(tmp_path / "text.jpg") == "not_an_image"
    assert _error_type(tmp_path / "truncated.jpg") == "truncated"
    assert _error_type(tmp_path / "truncated.png") == "truncated"


def test_absurd_sizes_rejected_before_decoding(tmp_path):
    _save(tmp_path / "tiny.png", Image.new("RGB", (4, 4)))
    assert _error_type(tmp_path / "tiny.png") == "too_small"
    _save(tmp_path / "wide.png", Image.new("RGB", (300, 10)))
    assert _error_type(tmp_path / "wide.png", ImageLimits(max_side=200)) == "too_large"
    # A 60000 x 60000 PNG header with almost no data: must be refused from the header, not decoded.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    assert _error_type(tmp_path / "bomb.png") == "too_large"


def test_cmyk_grayscale_16bit_alpha_palette_become_rgb(tmp_path):
    cmyk = decode_image(_save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "CMYK" and cmyk.rgb.shape == (16, 16, 3)
    assert cmyk.rgb[..., 0].mean() > 200 and cmyk.rgb[..., 1:].mean() < 60        # pure red

    gray = decode_image(_save(tmp_path / "gray.png", Image.new("L", (16, 16), 77)))
    assert gray.mode == "L" and (gray.rgb == 77).all()

    deep = np.full((16, 16), 65535, np.uint16)
    deep[:8] = 257 * 100
    sixteen = decode_image(_save(tmp_path / "16bit.png", Image.fromarray(deep)))
    assert sixteen.mode.startswith("I") and sixteen.rgb.dtype == np.uint8
    assert (sixteen.rgb[8:] == 255).all() and (sixteen.rgb[:8] == 100).all()

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :8, 3] = 255                                  # left half opaque red, right half transparent
    alpha = decode_image(_save(tmp_path / "alpha.png", Image.fromarray(rgba, "RGBA")))
    assert alpha.mode == "RGBA"
    assert (alpha.rgb[:, :8] == (200, 0, 0)).all() and (alpha.rgb[:, 8:] == 255).all()   # over white

    pal = Image.new("P", (16, 16), 3)
    pal.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    assert (decode_image(_save(tmp_path / "pal.png", pal)).rgb == (10, 20, 30)).all()


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6                                      # rotate 90 degrees on display
    path = _save(tmp_path / "rot.jpg", img, "JPEG", exif=exif.tobytes())
    decoded = decode_image(path)
    assert (decoded.width, decoded.height) == (20, 40)
    assert header_size(path) == (20, 40)


def test_non_image_detected_with_ultralytics_pil_patch(tmp_path):
    """ultralytics replaces PIL.Image.open with a version that tries a HEIF plugin on unknown files."""
    import ultralytics.utils.patches  # noqa: F401

    (tmp_path / "notes.jpg").write_text("not an image")
    assert _error_type(tmp_path / "notes.jpg") == "not_an_image"
