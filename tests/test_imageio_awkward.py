"""Unusual sample formats (issue 16): each is converted by a fixed rule or refused with ``unsupported_values``,
never turned into a plausible-looking wrong image."""
import numpy as np
import pytest
from PIL import Image

from detection.datasets.imageio import ImageError, decode_image


def _pgm(path, values, maxval):
    data = np.asarray(values, dtype=">u2" if maxval > 255 else np.uint8)
    path.write_bytes(f"P5 {data.shape[1]} {data.shape[0]} {maxval}\n".encode() + data.tobytes())
    return path


def _refused(path):
    with pytest.raises(ImageError) as info:
        decode_image(path)
    assert str(path) in str(info.value)
    return info.value.error_type, info.value.reason


def test_dark_sixteen_bit_pgm_stays_dark(tmp_path):
    """A 16-bit PGM opens as 'I' (32-bit): its samples were read as 8-bit whenever none exceeded 255, so a dark
    image (200 of 65535) came out at 200 instead of 1."""
    dark = decode_image(_pgm(tmp_path / "dark.pgm", np.full((16, 16), 200), 65535))
    assert dark.mode == "I" and (dark.rgb == 1).all()
    bright = decode_image(_pgm(tmp_path / "bright.pgm", np.full((16, 16), 65535), 65535))
    assert (bright.rgb == 255).all()
    twelve = decode_image(_pgm(tmp_path / "twelve.pgm", np.full((16, 16), 4095), 4095))   # Pillow scales to 65535
    assert (twelve.rgb == 255).all()


def test_thirty_two_bit_integers_outside_eight_bit_are_refused(tmp_path):
    Image.fromarray(np.full((16, 16), 77, np.int32)).save(tmp_path / "small.tif")
    assert (decode_image(tmp_path / "small.tif").rgb == 77).all()
    Image.fromarray(np.full((16, 16), 1000, np.int32)).save(tmp_path / "wide.tif")
    assert _refused(tmp_path / "wide.tif")[0] == "unsupported_values"
    Image.fromarray(np.full((16, 16), -5, np.int32)).save(tmp_path / "negative.tif")
    kind, reason = _refused(tmp_path / "negative.tif")
    assert kind == "unsupported_values" and "-5..-5" in reason


def test_float_images(tmp_path):
    unit = np.full((16, 16), 0.5, np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    assert (decode_image(tmp_path / "unit.tif").rgb == 128).all()
    Image.fromarray(unit * 200).save(tmp_path / "bytes.tif")
    assert (decode_image(tmp_path / "bytes.tif").rgb == 100).all()
    nan = unit.copy()
    nan[3, 4] = np.nan                                      # a no-data pixel
    Image.fromarray(nan).save(tmp_path / "nan.tif")
    kind, reason = _refused(tmp_path / "nan.tif")
    assert kind == "unsupported_values" and "1 NaN or infinite" in reason
    nodata = unit * 200
    nodata[0, 0] = -9999                                    # a no-data value
    Image.fromarray(nodata).save(tmp_path / "nodata.tif")
    kind, reason = _refused(tmp_path / "nodata.tif")
    assert kind == "unsupported_values" and "-9999" in reason


def test_two_channel_and_keyed_transparency_go_over_white(tmp_path):
    Image.new("LA", (16, 16), (100, 128)).save(tmp_path / "la.png")
    la = decode_image(tmp_path / "la.png")
    assert la.mode == "LA" and np.abs(la.rgb.astype(int) - round(100 * 128 / 255 + 255 * 127 / 255)).max() <= 1
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (10, 20, 30)                               # left half the transparent key colour
    rgb[:, 8:] = (200, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "key.png", transparency=(10, 20, 30))
    keyed = decode_image(tmp_path / "key.png")
    assert (keyed.rgb[:, :8] == 255).all() and (keyed.rgb[:, 8:] == (200, 0, 0)).all()
    gray = np.full((16, 16), 40, np.uint8)
    gray[:, 8:] = 90
    Image.fromarray(gray).save(tmp_path / "gray_key.png", transparency=40)
    gk = decode_image(tmp_path / "gray_key.png")
    assert (gk.rgb[:, :8] == 255).all() and (gk.rgb[:, 8:] == 90).all()
