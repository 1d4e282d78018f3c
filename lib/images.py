"""Image decoding shared by the data pipeline (data/) and inference (lib/predictor.py): any PIL mode
or bit depth as 8-bit RGB. It imports nothing from data/ or refer/, so inference needs no pycocotools."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import UserInputError

_HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def eight_bit(values: np.ndarray) -> np.ndarray:
    """Pixel values of any depth as uint8: booleans and floats with a peak <= 1 are scaled by 255, values
    with a peak above 255 (16-bit) by 1/257 (65535 -> 255); anything else is kept, then rounded and clipped."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    floating = np.issubdtype(values.dtype, np.floating)
    values = values.astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if floating and peak <= 1.0:
        values = values * 255.0
    elif peak > 255:
        values = values / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def rgb_image(image: Image.Image) -> Image.Image:
    """A PIL image of any mode as 8-bit RGB.

    8-bit modes (L, LA, P, PA, RGBA, CMYK, YCbCr, ...) go through PIL's `convert('RGB')`, as in
    the released code. PIL would clip 16-bit and float grey images to 255, so those are first
    scaled to 8 bits with `eight_bit`.
    """
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        image = Image.fromarray(eight_bit(np.asarray(image)))
    return image.convert("RGB")


def decode_rgb_image(path: str, label: str, exif_transpose: bool = False) -> Image.Image:
    """An existing image file as 8-bit RGB (see `rgb_image`); one PIL cannot decode is a UserInputError
    that starts with `label` (e.g. "Image 'x.jpg' (ref 3)"). `exif_transpose` turns a camera photo upright."""
    try:
        with Image.open(path) as image:
            return rgb_image(ImageOps.exif_transpose(image) if exif_transpose else image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserInputError(f"{label} cannot be decoded: corrupt or not an image ({type(err).__name__}: {err}).") from err
