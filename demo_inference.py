"""Segment the object an expression refers to in your own image.

    python demo_inference.py --resume model_best_refcoco.pth --image photo.jpg \
        --sentence "the man in the red shirt" "the dog on the left"

The architecture (variant, Swin size, window, text encoder, input size) is read from the
checkpoint; the model flags only override it. For each sentence, writes `<stem>_<i>_mask.png`
(0/255, at the image's own size, as the photo is displayed: EXIF orientation applied) and
`<stem>_<i>_overlay.png` (outside the mask darkened, the mask outlined) into --out-dir.
The Python API behind it is `lib.predictor.Predictor`.
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageFilter

import cli
from lib.architecture import add_override_arguments, overrides_from
from lib.predictor import Predictor, open_image

# Outline colours; each overlay uses the one farthest from the object's mean colour.
OUTLINE_COLOURS = np.array([[0, 255, 255], [255, 0, 255], [255, 255, 0], [0, 255, 0], [255, 0, 0], [0, 0, 255]],
                           dtype=np.float32)
OUTSIDE_BRIGHTNESS = 0.35


def get_demo_parser():
    parser = argparse.ArgumentParser(description="LAVT demo: image + expression(s) -> mask and overlay PNGs")
    parser.add_argument("--resume", required=True, help="the checkpoint (.pth): ours or a released LAVT one")
    parser.add_argument("--image", required=True, help="the image file to segment (any format PIL reads)")
    parser.add_argument("--sentence", nargs="+", required=True, help="one or more referring expressions")
    parser.add_argument("--out-dir", default="demo_outputs", dest="out_dir", help="where the PNGs are written (default: demo_outputs)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu; cuda falls back to cpu without CUDA")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (default off; fp16 needs CUDA)")
    add_override_arguments(parser)
    return parser


def outline(mask):
    """The pixels just outside the mask: a band about 1/300 of the shorter side (at least 1 px) wide."""
    size = 2 * max(1, round(min(mask.shape) / 300)) + 1
    grown = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(size))
    return (np.asarray(grown) > 0) & ~mask


def overlay(image, mask):
    """The image with everything outside `mask` darkened and the mask outlined in a contrasting colour."""
    rgb = np.asarray(image, dtype=np.float32)
    shown = rgb * OUTSIDE_BRIGHTNESS
    shown[mask] = rgb[mask]
    if mask.any():
        mean = rgb[mask].mean(axis=0)
        colour = OUTLINE_COLOURS[np.argmax(np.linalg.norm(OUTLINE_COLOURS - mean, axis=1))]
        shown[outline(mask)] = colour
    return Image.fromarray(shown.round().astype(np.uint8))


def describe(index, prediction, path):
    pixels = int(prediction.mask.sum())
    line = f"[{index}] {prediction.expression!r}: {pixels} pixels ({100 * prediction.mask.mean():.1f}% of the image)"
    if prediction.no_target is not None:
        line += f", no-target score {prediction.no_target_score:.2f}"
    if prediction.no_target or pixels == 0:
        line += ": the model finds nothing this expression refers to in the image"
    return f"{line} -> {path}"


def main(args):
    image = open_image(args.image)  # a bad --image fails before anything is written
    overrides = overrides_from(args)
    predictor = Predictor.from_checkpoint(args.resume, device=cli.resolve_device(args.device),
                                          amp=None if args.amp == "off" else args.amp, **overrides)
    used = predictor.args
    print(f"Model: {used.model}, Swin-{used.swin_type}, window {used.window_size}, text encoder {used.ck_bert}, "
          f"{used.img_size} px input")
    cli.check_writable_dir(args.out_dir, "--out-dir")
    stem = os.path.splitext(os.path.basename(args.image))[0]
    for i, prediction in enumerate(predictor.predict(image, args.sentence)):
        mask_path = os.path.join(args.out_dir, f"{stem}_{i}_mask.png")
        Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(mask_path)
        overlay(image, prediction.mask).save(os.path.join(args.out_dir, f"{stem}_{i}_overlay.png"))
        print(describe(i, prediction, mask_path))


if __name__ == "__main__":
    cli.run_cli(main, get_demo_parser())
