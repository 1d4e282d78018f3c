"""Joint image / mask transforms for referring segmentation, built on torchvision.

Every transform is called as `image, target = t(image, target)`, where `image` is a PIL image
(then a float tensor) and `target` the object mask (PIL 'L'/'P' image, then an int64 tensor).
`target` may be None when only the image is transformed.

Resizing happens on PIL images, as in the released LAVT code: torchvision then uses PIL's
bilinear filter (which always antialiases), so tensors match the original pipeline exactly.
There are deliberately no flips: they would contradict "left" / "right" in the expressions.
"""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = ["Compose", "Resize", "ToTensor", "Normalize", "get_transform", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target=None):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self.transforms))})"


class Resize:
    """Resize to exactly (h, w): the image bilinearly, the mask with nearest neighbour."""

    def __init__(self, h: int, w: int):
        self.h, self.w = int(h), int(w)

    def __call__(self, image, target=None):
        image = F.resize(image, [self.h, self.w], interpolation=InterpolationMode.BILINEAR)
        if target is not None:
            target = F.resize(target, [self.h, self.w], interpolation=InterpolationMode.NEAREST)
        return image, target

    def __repr__(self):
        return f"{type(self).__name__}(h={self.h}, w={self.w})"


class ToTensor:
    """Image -> float (C, H, W) in [0, 1]; mask -> int64 (H, W) holding the mask's values."""

    def __call__(self, image, target=None):
        image = _uint8_image_to_tensor(image) if _is_uint8_pil(image) else F.to_tensor(image)
        if target is not None:
            target = torch.as_tensor(np.array(target), dtype=torch.int64)
        return image, target

    def __repr__(self):
        return f"{type(self).__name__}()"


def _is_uint8_pil(image):
    return isinstance(image, Image.Image) and image.mode in ("RGB", "L")


def _uint8_image_to_tensor(image):
    """`F.to_tensor` for 8-bit RGB / L images, bit for bit, in a quarter of the time: torchvision
    permutes the interleaved uint8 pixels with a slow strided copy, NumPy transposes them fast."""
    pixels = np.asarray(image).reshape(image.height, image.width, -1)
    planes = torch.from_numpy(pixels.transpose(2, 0, 1).copy())  # copy(): C order, and writable
    return planes.to(torch.get_default_dtype()).div_(255)


class Normalize:
    """Normalise the image channels; the mask is passed through.

    `inplace=True` overwrites the input tensor (same values, no copy): for pipelines that own it.
    """

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = tuple(mean), tuple(std), inplace

    def __call__(self, image, target=None):
        return F.normalize(image, mean=self.mean, std=self.std, inplace=self.inplace), target

    def __repr__(self):
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def get_transform(img_size: int) -> Compose:
    """The transform of the released training and test scripts: resize to a square, ImageNet-normalise."""
    # In place: ToTensor's output is a fresh tensor nobody else holds.
    return Compose([Resize(img_size, img_size), ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=True)])
