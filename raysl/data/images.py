"""Image helpers shared by the sources: square resize, PNG encode, decode with one mode."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raysl.data.base import data_error

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
_CHUNK = 1024  # images per resize step, bounds the float32 copy


def resize_square(images: np.ndarray, size: int | None) -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8; the input itself when it already fits.

    Square images are resized (bilinear, antialiased); others have their shorter side
    resized to `size`, then the centre is cropped.
    """
    n, c, h, w = images.shape
    if size is None or (h == size and w == size):
        return images
    short = min(h, w)
    new_h, new_w = max(size, round(h * size / short)), max(size, round(w * size / short))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out = np.empty((n, c, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        chunk = torch.from_numpy(images[start : start + _CHUNK].astype(np.float32))
        chunk = F.interpolate(
            chunk, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        chunk = chunk[:, :, top : top + size, left : left + size]
        out[start : start + _CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def encode_png(image: np.ndarray) -> bytes:
    """(C, H, W) uint8 with C in {1, 3} -> PNG bytes (mode L or RGB)."""
    from PIL import Image

    pixels = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_images(
    items: Sequence[bytes | Path],
    names: Sequence[str],
    size: int | None,
    root: str | Path,
) -> np.ndarray:
    """Decode images with PIL into one (N, C, H, W) uint8 array, in one pass.

    Every image becomes grayscale (C=1) if all of them are grayscale, RGB (C=3) otherwise.
    Images of one size keep it; mixed sizes are all resized with `resize_square` to `size`,
    which is then required.

    Args:
        items: encoded bytes or file paths.
        names: one name per item for error messages (a path, or "file row 12").
        size: data.image_size; None keeps the native size.
        root: data.root, named in errors.
    """
    if not items:
        raise data_error("no images found", "point data.root at a directory with images", root)
    out: np.ndarray | None = None  # allocated from the first image, widened when needed
    mixed = False  # sizes differ: everything is resized to `size`
    for i in range(len(items)):
        with _open(items[i], names[i], root) as image:
            pixels = np.asarray(image.convert("L" if image.mode in GRAY_MODES else "RGB"))
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
        if out is None:
            out = np.empty((len(items), *pixels.shape), dtype=np.uint8)
        if pixels.shape[0] > out.shape[1]:  # the first RGB image after grayscale ones
            out = np.repeat(out, 3, axis=1)
        if pixels.shape[1:] != out.shape[2:] and not mixed:
            if size is None:
                (h1, w1), (h2, w2) = out.shape[2:], pixels.shape[1:]
                raise data_error(
                    f"images have different sizes ({h1}x{w1} and {h2}x{w2} in {names[i]})",
                    "set data.image_size to resize them at load, e.g. --set data.image_size=64",
                    root,
                    key="data.image_size",
                )
            resized = np.empty((len(items), out.shape[1], size, size), dtype=np.uint8)
            resized[:i] = resize_square(out[:i], size)
            out, mixed = resized, True
        if mixed:
            pixels = resize_square(pixels[None], size)[0]
        out[i] = pixels  # a grayscale image broadcasts to RGB
    assert out is not None
    return out


def _open(item: bytes | Path, name: str, root: str | Path) -> Any:
    """A loaded PIL image; a data error naming `name` if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
        image.load()
        return image
    except Image.DecompressionBombError:
        raise data_error(
            f"image {name} claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels "
            "(PIL's limit against decompression bombs)",
            "replace the file with an image of a sensible size, or remove it",
            root,
        ) from None
    except PermissionError:
        raise data_error(
            f"permission denied reading image {name}",
            "make it readable by this user (chmod), or remove it",
            root,
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise data_error(
            f"cannot decode image {name} ({exc}); expected PNG/JPEG/BMP/WebP",
            "replace or remove the file",
            root,
        ) from None
