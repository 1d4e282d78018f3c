"""Segment the object an expression refers to in your own image.

    python demo_inference.py --resume model_best_refcoco.pth --swin_type base --window12 \
        --img_size 480 --image photo.jpg --sentence "the man in the red shirt" "the dog on the left"

For each sentence, writes `<stem>_<i>_mask.png` (0/255, the image's own size) and
`<stem>_<i>_overlay.png` into --out-dir. The image is resized to img_size x img_size as in
training; the logits are resized back to the original size before the argmax.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import engine
import utils
from args import get_parser
from bert import load_tokenizer
from data.dataset_refer_bert import load_rgb_image, tokenize_expressions
from transforms import get_transform

OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)


def get_demo_parser():
    parser = get_parser()
    parser.description = "LAVT demo: image + expression(s) -> mask and overlay PNGs"
    parser.add_argument("--image", required=True, help="the image to segment")
    parser.add_argument("--sentence", nargs="+", required=True, help="one or more referring expressions")
    parser.add_argument("--out-dir", default="demo_outputs", dest="out_dir", help="where the PNGs are written")
    return parser


@torch.no_grad()
def predict_masks(model, text_encoder, tokenizer, image, sentences, img_size, device):
    """Boolean masks (n_sentences, H, W) at the image's own size."""
    pixels, _ = get_transform(img_size)(image, Image.new("L", image.size))
    input_ids, attention_mask = tokenize_expressions(tokenizer, sentences)
    images = pixels.unsqueeze(0).expand(len(sentences), -1, -1, -1).to(device)
    logits = engine.forward_lavt(model, text_encoder, images, input_ids.to(device), attention_mask.to(device))
    logits = F.interpolate(logits.float(), size=(image.height, image.width), mode="bilinear", align_corners=True)
    return logits.argmax(1).bool().cpu()


def overlay(image, mask, alpha=0.5):
    rgb = np.asarray(image, dtype=np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * OVERLAY_COLOUR
    return Image.fromarray(rgb.astype(np.uint8))


def main(args):
    if not args.resume:
        raise ValueError("--resume: pass the checkpoint (.pth) to run.")
    device = utils.resolve_device(args.device)
    utils.check_writable_dir(args.out_dir, "--out-dir")
    image = load_rgb_image(args.image, what="--image")
    model, text_encoder = engine.load_trained_model(args, device)
    tokenizer = load_tokenizer(args.bert_tokenizer)
    masks = predict_masks(model, text_encoder, tokenizer, image, args.sentence, args.img_size, device)
    stem = os.path.splitext(os.path.basename(args.image))[0]
    for i, (sentence, mask) in enumerate(zip(args.sentence, masks)):
        mask_np = mask.numpy()
        mask_path = os.path.join(args.out_dir, f"{stem}_{i}_mask.png")
        Image.fromarray(mask_np.astype(np.uint8) * 255).save(mask_path)
        overlay(image, mask_np).save(os.path.join(args.out_dir, f"{stem}_{i}_overlay.png"))
        print(f"[{i}] {sentence!r}: {int(mask_np.sum())} pixels -> {mask_path}")


if __name__ == "__main__":
    utils.run_cli(main, get_demo_parser())
