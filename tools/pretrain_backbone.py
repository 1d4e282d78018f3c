"""Pretrain the Swin backbone on generated scenes, the way LAVT's comes from ImageNet pretraining.

    python tools/pretrain_backbone.py --out weights/swin_nano_synref_pretrained.pth

LAVT fine-tunes a Swin pretrained on ImageNet-22K; on the generated benchmark (data/synthetic) no
such backbone exists, so a from-scratch model spends its budget learning to see colours and shapes
before it can learn to read. This script trains the plain Swin (no fusion, no language: the
backbone's `visual_features`) with a dense, language-free objective: for every pixel, the colour,
the shape and the size class of the object painted there (or background), from a light FPN-style
head on the four stages; `--position-bins N` adds the column and the row of the object's centre,
in N equal bins of the image (a Swin without absolute position embeddings, as LAVT's, must learn
where things are from the image borders, which location and ordinal expressions need);
`--rank-tasks` adds each object's rank (1, 2, 3, 4 or later) from the left, right, top and bottom
among all objects, among those of its shape and among those of its colour (the comparisons across
the image that "the leftmost circle" and "the second red one from the top" need). The
scenes come from SynRef's own sampler with a random stream that no benchmark seed uses, and no object has one of the colour-shape pairs that testC may hold out
(data/synthetic/writer.py's HELD_OUT_DESIGN), so testC stays a test of composition.

The output is in the official Swin layout (`{"model": state_dict}`, plus a `provenance` entry with
this run's options and accuracies), so `--pretrained_swin_weights` loads it unchanged; the stage
norms `norm0-3` are included too (LAVT's decoder reads them). The head is not saved.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from data.synthetic.sampling import sample_scene  # noqa: E402
from data.synthetic.scene import COLOURS, SHAPES, SIZES  # noqa: E402
from data.synthetic.writer import HELD_OUT_DESIGN  # noqa: E402
from errors import UserInputError  # noqa: E402
from lib.backbone import MultiModalSwinTransformer  # noqa: E402
from lib.segmentation import SWIN_CONFIGS  # noqa: E402
from transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

# Benchmark images draw from default_rng([seed, index]) and ([seed, index, 1]); this third key
# keeps the pretraining scenes apart from every benchmark seed's.
STREAM_KEY = 2
# Per-pixel class tasks: name -> classes after background (0).
TASKS = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}
POSITION_TASKS = ("column", "row")
# Rank tasks: (direction, group). Direction: (centre key, descending); group: the attribute an object
# must share to be compared with it (None: every object).
RANK_DIRECTIONS = {"left": ("cx", False), "right": ("cx", True), "top": ("cy", False), "bottom": ("cy", True)}
RANK_GROUPS = {"all": None, "shape": "shape", "colour": "colour"}
RANK_TASKS = tuple((direction, group) for group in RANK_GROUPS for direction in RANK_DIRECTIONS)
MAX_RANK = 4  # ranks beyond it share its class ("4th or later")
# The twelve rank tasks' losses together weigh as three tasks, so that they do not crowd out colour and
# shape (the position tasks, at full weight, had cost shape accuracy 84% -> 78% at equal epochs).
RANK_LOSS_WEIGHT = 0.25


def task_classes(position_bins=0, rank_tasks=False):
    """{task: classes, background included}: colour, shape, size, then column and row when
    position_bins > 0, then the rank tasks (`rank_<direction>_<group>`) when rank_tasks."""
    classes = {name: len(values) + 1 for name, values in TASKS.items()}
    if position_bins:
        classes.update({name: position_bins + 1 for name in POSITION_TASKS})
    if rank_tasks:
        classes.update({f"rank_{direction}_{group}": MAX_RANK + 1 for direction, group in RANK_TASKS})
    return classes


def object_ranks(objects):
    """Per object, its rank (1-based, capped at MAX_RANK) for each of RANK_TASKS, in that order.
    Ties (equal centres) share the better rank."""
    ranks = []
    for obj in objects:
        row = []
        for direction, group in RANK_TASKS:
            key, descending = RANK_DIRECTIONS[direction]
            attribute = RANK_GROUPS[group]
            peers = [o for o in objects if attribute is None or o[attribute] == obj[attribute]]
            ahead = sum((o[key] > obj[key]) if descending else (o[key] < obj[key]) for o in peers)
            row.append(min(ahead + 1, MAX_RANK))
        ranks.append(row)
    return ranks


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output .pth (official Swin layout)")
    parser.add_argument("--swin_type", default="nano", choices=list(SWIN_CONFIGS))
    parser.add_argument("--window-size", type=int, default=4, dest="window_size")
    parser.add_argument("--img-size", type=int, default=64, dest="img_size",
                        help="training resolution (the fine-tuning --img_size)")
    parser.add_argument("--gen-img-size", type=int, default=128, dest="gen_img_size",
                        help="resolution the scenes are painted at, then resized as the dataset does")
    parser.add_argument("--num-images", type=int, default=6000, dest="num_images")
    parser.add_argument("--seed", type=int, default=1000, help="scene seed (stream disjoint from the benchmark's)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--position-bins", type=int, default=0, dest="position_bins",
                        help="also classify the column and row of each object's centre in this many bins (0: off)")
    parser.add_argument("--rank-tasks", action="store_true", dest="rank_tasks",
                        help="also classify each object's rank from the left, right, top and bottom among all "
                             "objects, those of its shape and those of its colour")
    parser.add_argument("--batch-size", type=int, default=32, dest="batch_size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.05)
    parser.add_argument("--drop-path", type=float, default=0.1, dest="drop_path")
    parser.add_argument("--amp", choices=["off", "bf16"], default="bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: PyTorch's default)")
    parser.add_argument("--save-dtype", choices=["float32", "float16"], default="float32", dest="save_dtype",
                        help="float16 halves the file (the shipped nano weights); loading casts back to float32")
    parser.add_argument("--cache", default="", help="npz of the generated scenes (written once, then reused)")
    args = parser.parse_args(argv)
    for name in ("num_images", "epochs", "batch_size", "img_size", "gen_img_size", "window_size"):
        if getattr(args, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.position_bins < 0:
        raise UserInputError(f"--position-bins must be 0 (off) or a positive integer, got {args.position_bins}")
    if args.num_images < 20:
        raise UserInputError(f"--num-images {args.num_images}: need at least 20 (5% are held out for accuracy)")
    if not (args.lr > 0 and args.wd >= 0 and 0 <= args.drop_path < 1):
        raise UserInputError("--lr must be > 0, --wd >= 0 and --drop-path in [0, 1)")
    return args


def _resize(array, size, resample):
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def make_scene(seed, index, gen_size, size, position_bins=0, rank_tasks=False):
    """One scene: image (size, size, 3) uint8 and labels (tasks, size, size) uint8 in task_classes' order:
    colour, shape, size, then column and row of the object's centre when position_bins > 0, then its
    ranks when rank_tasks."""
    rng = np.random.default_rng([seed, index, STREAM_KEY])
    scene, _, image, visible = sample_scene(rng, gen_size, avoid=HELD_OUT_DESIGN)
    labels = np.zeros((len(task_classes(position_bins, rank_tasks)), gen_size, gen_size), dtype=np.uint8)
    ranks = object_ranks(scene["objects"]) if rank_tasks else [[]] * len(scene["objects"])
    for obj, mask, obj_ranks in zip(scene["objects"], visible, ranks, strict=True):
        classes = [values.index(obj[task]) for task, values in TASKS.items()]
        if position_bins:
            classes += [min(int(obj[key] * position_bins // gen_size), position_bins - 1) for key in ("cx", "cy")]
        classes += [rank - 1 for rank in obj_ranks]
        for t, value in enumerate(classes):
            labels[t][mask] = value + 1
    # Resized exactly as transforms.Resize does it: PIL bilinear for the image, nearest for labels.
    image = _resize(image, size, Image.BILINEAR)
    labels = np.stack([_resize(layer, size, Image.NEAREST) for layer in labels])
    return image, labels


def generate(args):
    # Everything the scenes and labels depend on; a cache written with other options is regenerated.
    key = np.array([args.seed, args.num_images, args.gen_img_size, args.img_size, args.position_bins,
                    int(args.rank_tasks)])
    if args.cache and os.path.isfile(args.cache):
        data = np.load(args.cache)
        if "key" in data and np.array_equal(data["key"], key):
            return data["images"], data["labels"]
    pairs = [make_scene(args.seed, i, args.gen_img_size, args.img_size, args.position_bins, args.rank_tasks)
             for i in range(args.num_images)]
    images, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    if args.cache:
        np.savez(args.cache, images=images, labels=labels, key=key)
    return images, labels


class DenseHead(nn.Module):
    """Light FPN-style head: each stage -> `width` channels, upsampled to stride 4 and summed, then a
    1x1 classifier per task."""

    def __init__(self, in_channels, width=64, num_classes=(9, 9, 3)):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in in_channels])
        self.mix = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU())
        self.classifiers = nn.ModuleList([nn.Conv2d(width, n, 1) for n in num_classes])

    def forward(self, maps):
        size = maps[0].shape[-2:]
        x = sum(F.interpolate(lat(m), size=size, mode="bilinear", align_corners=False) if i else lat(m)
                for i, (lat, m) in enumerate(zip(self.lateral, maps, strict=True)))
        x = self.mix(x)
        return [cls(x) for cls in self.classifiers]


def to_tensor(images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def losses_and_logits(backbone, head, images, labels, amp, weights=None):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        logits = head(backbone.visual_features(images))
    logits = [F.interpolate(lg.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
              for lg in logits]
    weights = weights or [1.0] * len(logits)
    return [w * F.cross_entropy(lg, labels[:, t]) for t, (w, lg) in enumerate(zip(weights, logits, strict=True))], logits


@torch.no_grad()
def accuracy(backbone, head, images, labels, amp, names, batch_size=64):
    """Per task (`names`): share of object (non-background) pixels whose class is right."""
    backbone.eval()
    head.eval()
    correct, total = np.zeros(len(names)), 0
    for start in range(0, len(images), batch_size):
        x, y = to_tensor(images[start:start + batch_size]), torch.from_numpy(labels[start:start + batch_size]).long()
        _, logits = losses_and_logits(backbone, head, x, y, amp)
        foreground = y[:, 0] > 0
        total += int(foreground.sum())
        for t, lg in enumerate(logits):
            correct[t] += int(((lg.argmax(1) == y[:, t]) & foreground).sum())
    backbone.train()
    head.train()
    return {task: round(float(c / max(total, 1)), 4) for task, c in zip(names, correct, strict=True)}


def swin_state_dict(backbone, dtype=torch.float32):
    """The backbone's Swin tensors in the official layout: no fusion, gates or recomputed buffers."""
    return {k: v.detach().to(dtype).clone() for k, v in backbone.state_dict().items()
            if not backbone.is_fusion_parameter(k) and not k.endswith(("relative_position_index", "attn_mask"))}


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    images, labels = generate(args)
    generate_s = time.time() - started
    held = max(1, len(images) // 20)
    train_x, train_y, val_x, val_y = images[held:], labels[held:], images[:held], labels[:held]
    print(f"generated {len(images)} scenes at {args.gen_img_size} px -> {args.img_size} px in {generate_s:.0f} s",
          flush=True)

    embed_dim, depths, heads = SWIN_CONFIGS[args.swin_type]
    backbone = MultiModalSwinTransformer(embed_dim, depths, heads, window_size=args.window_size,
                                         drop_path_rate=args.drop_path)
    classes = task_classes(args.position_bins, args.rank_tasks)
    names = list(classes)
    weights = [RANK_LOSS_WEIGHT if name.startswith("rank_") else 1.0 for name in names]
    head = DenseHead(backbone.num_features, num_classes=list(classes.values()))
    params = [p for n, p in backbone.named_parameters() if not backbone.is_fusion_parameter(n)]
    optimizer = torch.optim.AdamW([{"params": params}, {"params": head.parameters()}], lr=args.lr,
                                  weight_decay=args.wd)
    steps_per_epoch = len(train_x) // args.batch_size
    total = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total, pct_start=0.05)
    generator = np.random.default_rng(args.seed)
    history = []
    for epoch in range(args.epochs):
        order = generator.permutation(len(train_x))
        t, sums = time.time(), np.zeros(len(names))
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * args.batch_size:(step + 1) * args.batch_size])
            x, y = to_tensor(train_x[idx]), torch.from_numpy(train_y[idx]).long()
            terms, _ = losses_and_logits(backbone, head, x, y, args.amp, weights)
            optimizer.zero_grad(set_to_none=True)
            sum(terms).backward()
            optimizer.step()
            scheduler.step()
            sums += [float(v.detach()) for v in terms]
        acc = accuracy(backbone, head, val_x, val_y, args.amp, names)
        history.append({"epoch": epoch, "loss": dict(zip(names, (sums / steps_per_epoch).round(4).tolist(), strict=True)),
                        "val_accuracy": acc, "seconds": round(time.time() - t, 1)})
        print(json.dumps(history[-1]), flush=True)

    provenance = {"script": "tools/pretrain_backbone.py", "options": vars(args), "history": history,
                  "excluded_pairs": [list(p) for p in HELD_OUT_DESIGN], "stream_key": STREAM_KEY,
                  "seconds": round(time.time() - started, 1), "generate_seconds": round(generate_s, 1),
                  "torch": str(torch.__version__), "threads": torch.get_num_threads(), "machine": platform.machine(),
                  "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    torch.save({"model": swin_state_dict(backbone, getattr(torch, args.save_dtype)), "provenance": provenance}, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) in {provenance['seconds']:.0f} s; "
          f"val accuracy {history[-1]['val_accuracy']}")
    return provenance


if __name__ == "__main__":
    try:
        main()
    except UserInputError as error:
        sys.exit(f"error: {error}")
