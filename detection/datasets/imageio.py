"""Robust image loading: every image the pipeline reads goes through here and comes out as uint8 RGB.

Bad files raise :class:`ImageError` with a machine-readable ``error_type`` (recorded in the ``errors`` table):
missing_file, empty_file, not_an_image, too_large, too_small, truncated, unsupported_mode,
unsupported_values (sample values with no known 8-bit meaning: NaN/inf, negative, out-of-range float or 32-bit).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class ImageLimits(BaseModel):
    """Sizes outside these bounds are rejected before decoding (absurd sizes, decompression bombs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_pixels: int = Field(default=50_000_000, gt=0)
    min_side: int = Field(default=8, gt=0)
    max_side: int = Field(default=20_000, gt=0)


class ImageError(Exception):
    """An image that cannot be used; ``error_type`` is a stable short code, the message names the file."""

    def __init__(self, error_type: str, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.error_type = error_type
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image in RGB plus what the file was before conversion."""

    rgb: np.ndarray   # [H, W, 3] uint8
    mode: str         # PIL mode of the file (after EXIF orientation), e.g. 'RGB', 'CMYK', 'I;16', 'RGBA'
    sha256: str       # of the file's bytes

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def decode_image(path: str | Path, limits: ImageLimits | None = None) -> DecodedImage:
    """Read, fully decode, orient (EXIF) and convert one image file to RGB, or raise :class:`ImageError`."""
    limits = limits or ImageLimits()
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError("missing_file", path, "file not found") from None
    except OSError as exc:
        raise ImageError("unreadable", path, f"cannot read file: {exc}") from None
    if not data:
        raise ImageError("empty_file", path, "file is empty (0 bytes)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageError("too_large", path, str(exc)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as exc:
            # ImportError: ultralytics patches Image.open to try an optional HEIF plugin on unknown files.
            raise ImageError("not_an_image", path, f"not a readable image ({type(exc).__name__}: {exc})") from None
        _check_size(img.size, limits, path)
        sixteen_bit = _stored_as_sixteen_bit(img)
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError("truncated", path, f"image data is truncated or corrupt ({exc})") from None
    mode = img.mode
    return DecodedImage(rgb=_to_rgb(img, path, sixteen_bit), mode=mode, sha256=hashlib.sha256(data).hexdigest())


def load_rgb(path: str | Path, limits: ImageLimits | None = None) -> np.ndarray:
    """The image as a contiguous uint8 [H, W, 3] array (see :func:`decode_image`)."""
    return decode_image(path, limits).rgb


def _check_size(size: tuple[int, int], limits: ImageLimits, path: Path) -> None:
    width, height = size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageError("too_large", path, f"{width}x{height} exceeds limits "
                         f"(max_pixels={limits.max_pixels}, max_side={limits.max_side})")
    if min(width, height) < limits.min_side:
        raise ImageError("too_small", path, f"{width}x{height} is below min_side={limits.min_side}")


def _stored_as_sixteen_bit(img: Image.Image) -> bool:
    """Whether an 'I' (32-bit integer) image holds 16-bit samples: PGM/PPM with a maxval over 255 (Pillow scales
    them to 0..65535) or unsigned 16-bit raw data. Read from the header, before decoding, so not from the values."""
    if img.mode != "I":
        return False
    if img.format == "PPM":
        return True
    rawmodes = [t.args[0] if isinstance(t.args, tuple) else t.args for t in (img.tile or [])]
    return any(isinstance(r, str) and r.startswith("I;16") and not r.startswith("I;16S") for r in rawmodes)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def _to_rgb(img: Image.Image, path: Path, sixteen_bit: bool = False) -> np.ndarray:
    """uint8 [H, W, 3]. Sample formats without an 8-bit meaning get a fixed rule each, or an ``unsupported_values``
    error:

    - 16-bit ('I;16*', and 'I' holding 16-bit data: PGM/PPM, unsigned 16-bit raw), from the header: ``v / 257``,
      whatever the values (a dark 16-bit image stays dark).
    - other 32-bit integers ('I'): values must lie in 0..255 (8-bit data stored wide), else the image is refused.
    - float ('F'): finite values in [0, 1] are scaled by 255; if any exceeds 1, all must lie in [0, 255] (read as
      they are). NaN or infinite samples (no-data markers) and values outside both ranges are refused. This is the
      one rule read from the values: a [0, 255] float image whose values all lie <= 1 is read as [0, 1].
    - alpha ('RGBA', 'LA', 'PA', 'La', 'RGBa', a transparency key): composited over white.
    """
    mode = img.mode
    if "transparency" in img.info and mode in ("L", "RGB", "P", "1"):
        mode = "RGBA-key"
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and sixteen_bit):
        arr = np.asarray(img).astype(np.float64)
        return _gray_to_rgb(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))
    if mode == "I":
        arr = np.asarray(img)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError("unsupported_values", path, f"32-bit integer samples in {lo}..{hi}: no known scale to "
                                                         f"8 bits (only 0..255 is read)")
        return _gray_to_rgb(arr.astype(np.uint8))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if not finite.all():
            raise ImageError("unsupported_values", path, f"{int((~finite).sum())} NaN or infinite float samples "
                                                         f"(no-data values?)")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError("unsupported_values", path, f"float samples in [{lo:g}, {hi:g}]: only [0, 1] or "
                                                         f"[0, 255] is read")
        scale = 255.0 if hi <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa", "RGBA-key") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.ascontiguousarray(np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8))
    try:
        return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    except (ValueError, OSError) as exc:
        raise ImageError("unsupported_mode", path, f"cannot convert mode {mode!r} to RGB ({exc})") from None


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) as :func:`decode_image` would return them, from the header alone; None if unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_batch(images: list[np.ndarray], dtype=None):
    """HWC uint8 arrays of one size -> a contiguous NCHW tensor (float in [0, 1] unless ``dtype`` is given).

    Contiguity matters: a merely permuted (channels-last) batch makes resizing and convolutions on CPU up to twice
    as slow.
    """
    import torch

    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    if dtype is torch.uint8:
        return batch
    return batch.to(dtype or torch.float32).div_(255)
