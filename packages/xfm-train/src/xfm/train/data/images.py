"""Image bytes <-> PIL helpers used by the writers, the preparation tools and the loaders."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from xfm.train.data.errors import BadSampleError

__all__ = ["decode_image", "encode_image", "read_image_file"]


def encode_image(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode a PIL image (converted to RGB) as ``fmt`` bytes (``"JPEG"`` or ``"PNG"``)."""
    buf = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if fmt.upper() in ("JPEG", "JPG"):
        rgb.save(buf, format="JPEG", quality=quality)
    else:
        rgb.save(buf, format=fmt.upper())
    return buf.getvalue()


def decode_image(data: bytes, where: str = "") -> Image.Image:
    """Decode encoded image bytes to an RGB PIL image, fully loaded.

    Raises:
        BadSampleError: the bytes are empty, truncated or not an image.
    """
    at = f" ({where})" if where else ""
    if not data:
        raise BadSampleError(f"empty image bytes{at}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadSampleError(f"corrupt image{at}: {type(exc).__name__}: {exc}") from exc


def read_image_file(path: str | Path) -> tuple[bytes, tuple[int, int]]:
    """The bytes of an image file and its ``(width, height)``, checked to decode.

    Raises:
        BadSampleError: the file is missing, empty or not a decodable image.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise BadSampleError(f"image file not found: {p}") from exc
    img = decode_image(data, where=str(p))
    return data, img.size
