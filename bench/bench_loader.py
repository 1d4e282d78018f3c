"""Throughput of the training and evaluation data pipelines (images/s), per DataLoader worker count.

    python bench/bench_loader.py                          # 480 px, workers 0 1 2, 1 torch thread
    taskset -c 1 python bench/bench_loader.py --threads 1 # what docs/benchmarks.md's table was measured with
    python bench/bench_loader.py --profile                # cProfile of the in-process pipeline

It writes a REFER-format set (`refcoco` layout, `unc` split) of COCO-like images into --data-dir
(default: a temporary directory): 640 x 480 JPEGs of smooth colour fields, edges and noise (their
size on disk is close to COCO's), 3 objects per image, each made of 2-4 polygons of 12-40 points,
some overlapping, and 2-3 sentences per object. Then it times the loaders that train.py builds: the
training loader (`train.build_train_loader`: one random sentence per object, batch --batch-size)
and the per-epoch evaluation loader (`data.evaluation.build_eval_loader`, one sentence per object,
--eval-batch-size sentences), each at --img-size. "Per worker CPU second" divides by the CPU time of the loading processes (the
workers; the main process with 0 workers): the rate one worker reaches with a core of its own, which
wall time on a shared machine does not show. Rates count images (objects) over
--passes full passes, worker start-up included, as in every epoch of train.py. The target is 40 images/s per worker process, so that
a handful of workers feed a GPU that trains at 150 images/s.
"""
import argparse
import cProfile
import datetime
import io
import json
import os
import pickle
import platform
import pstats
import resource
import shutil
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.dataset_refer_bert import ReferDataset  # noqa: E402
from data.evaluation import build_eval_loader  # noqa: E402
from train import build_train_loader  # noqa: E402
from transforms import get_transform  # noqa: E402

WIDTH, HEIGHT = 640, 480
WORDS = ("left", "right", "man", "woman", "red", "car", "small", "dog", "behind", "the", "table", "near")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    parser.add_argument("--img-size", type=int, default=480)
    parser.add_argument("--images", type=int, default=180, help="images generated (3 objects each)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (released: 8 per GPU)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="sentences per evaluation batch")
    parser.add_argument("--passes", type=int, default=2, help="full passes over each loader per worker count")
    parser.add_argument("--data-dir", default="", help="keep (or reuse) the generated set here")
    parser.add_argument("--profile", action="store_true", help="profile one in-process pass of each pipeline instead")
    parser.add_argument("--json", default="", help="also write the results here")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- data


def coco_like_image(rng):
    """640 x 480 RGB: a blurred colour field with shapes and sensor-like noise, so that JPEG has real
    detail to code (a flat image would decode several times faster than a photograph)."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(12):
        x, y = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))
        w, h = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        draw.ellipse((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    field = field.filter(ImageFilter.GaussianBlur(1.5))
    noise = rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(np.asarray(field, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def polygon(rng, cx, cy, radius):
    points = int(rng.integers(12, 41))
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(0.5, 1.0, points)
    xs = np.clip(cx + radii * np.cos(angles), 0, WIDTH - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, HEIGHT - 1)
    return [round(float(v), 2) for pair in zip(xs, ys) for v in pair]


def write_refer_set(root, num_images, seed=0):
    """A `refcoco`/`unc` REFER set under `root`; the last third of the images is `val`."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images", "mscoco", "images", "train2014")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "refcoco"), exist_ok=True)
    images, annotations, refs = [], [], []
    for image_id in range(1, num_images + 1):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        coco_like_image(rng).save(os.path.join(image_dir, name), quality=90)
        images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT})
        split = "val" if image_id > num_images * 2 // 3 else "train"
        for _ in range(3):
            ann_id = len(annotations) + 1
            cx, cy = rng.uniform(80, WIDTH - 80), rng.uniform(80, HEIGHT - 80)
            parts = [polygon(rng, cx + rng.uniform(-40, 40), cy + rng.uniform(-40, 40), rng.uniform(30, 120))
                     for _ in range(int(rng.integers(2, 5)))]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": parts,
                                "area": 1.0, "bbox": [cx - 50, cy - 50, 100, 100], "iscrowd": 0})
            sentences = []
            for _ in range(int(rng.integers(2, 4))):
                words = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(2, 9))))
                sentences.append({"sent_id": len(refs) * 4 + len(sentences), "raw": words, "sent": words,
                                  "tokens": words.split()})
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1,
                         "split": split, "sentences": sentences, "file_name": name})
    with open(os.path.join(root, "refcoco", "instances.json"), "w") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}, handle)
    with open(os.path.join(root, "refcoco", "refs(unc).p"), "wb") as handle:
        pickle.dump(refs, handle, protocol=2)


def datasets(root, img_size):
    args = SimpleNamespace(refer_data_root=root, dataset="refcoco", splitBy="unc", bert_tokenizer="minilm")
    transform = get_transform(img_size)
    return (ReferDataset(args, image_transforms=transform, split="train"),
            ReferDataset(args, image_transforms=transform, split="val", eval_mode=True))


# --------------------------------------------------------------------------- timing


def cpu_seconds():
    """(this process, its reaped children): DataLoader workers are joined at the end of each pass."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time(), children.ru_utime + children.ru_stime


def images_per_second(loader, count_images, passes, workers):
    """(images per wall second, images per CPU second of one loading process, images) over `passes` full
    passes, each timed from the creation of its iterator, so worker start-up counts (as it does in every
    epoch of train.py) and no prefetched batch goes unpaid. The CPU rate is what a worker delivers with a
    core of its own, whatever else shares the machine's cores."""
    seconds, images = 0.0, 0
    main_before, children_before = cpu_seconds()
    for _ in range(passes):
        started = time.perf_counter()
        for batch in loader:
            images += count_images(batch)
        seconds += time.perf_counter() - started
    main_after, children_after = cpu_seconds()
    busy = children_after - children_before if workers else main_after - main_before
    return images / seconds, images / busy, images


def measure_loaders(train_set, val_set, workers, opts):
    """The training loader of train.py and its per-epoch validation loader."""
    train_args = SimpleNamespace(batch_size=opts.batch_size, workers=workers, pin_mem=False, seed=0, accum_steps=1)
    train_loader = build_train_loader(train_set, 0, 1, train_args)[0]
    return train_loader, build_eval_loader(val_set, opts.eval_batch_size, one_sentence_seed=0, workers=workers)


def measure(train_set, val_set, workers, opts):
    train_loader, eval_loader = measure_loaders(train_set, val_set, workers, opts)
    train_rate, train_cpu_rate, train_images = images_per_second(
        train_loader, lambda batch: batch[0].shape[0], opts.passes, workers)
    eval_rate, eval_cpu_rate, eval_images = images_per_second(
        eval_loader, lambda batch: len(batch["samples"]), opts.passes, workers)
    return {"workers": workers, "train_images_per_s": train_rate, "train_images_per_cpu_s": train_cpu_rate,
            "eval_images_per_s": eval_rate, "eval_images_per_cpu_s": eval_cpu_rate,
            "train_images": train_images, "eval_images": eval_images}


def profile(train_set, val_set, opts):
    """cProfile of one in-process pass over each pipeline, the functions that took longest first."""
    for name, loader in (("training", measure_loaders(train_set, val_set, 0, opts)[0]),
                         ("evaluation", measure_loaders(train_set, val_set, 0, opts)[1])):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in loader:
            pass
        profiler.disable()
        report = io.StringIO()
        pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(14)
        print(f"--- {name} pipeline\n{report.getvalue()}")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()}, {cpu}, {os.cpu_count()} cores"


def main(argv=None):
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    root = opts.data_dir or tempfile.mkdtemp(prefix="lavt_bench_loader_")
    try:
        if not os.path.isfile(os.path.join(root, "refcoco", "refs(unc).p")):
            write_refer_set(root, opts.images)
        train_set, val_set = datasets(root, opts.img_size)
        print(f"bench_loader: {machine()}; {datetime.datetime.now().isoformat(timespec='seconds')}; "
              f"torch {torch.__version__}, {opts.threads} thread(s); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {len(train_set)} training and {len(val_set)} "
              f"evaluation objects at {opts.img_size} px", flush=True)
        if opts.profile:
            profile(train_set, val_set, opts)
            return []
        print("\n| workers | training images/s | per worker CPU second | evaluation images/s | per worker CPU second |"
              "\n|---|---|---|---|---|")
        rows = []
        for workers in opts.workers:
            row = measure(train_set, val_set, workers, opts)
            print(f"| {workers} | {row['train_images_per_s']:.1f} | {row['train_images_per_cpu_s']:.1f} | "
                  f"{row['eval_images_per_s']:.1f} | {row['eval_images_per_cpu_s']:.1f} |", flush=True)
            rows.append(row)
        if opts.json:
            with open(opts.json, "w") as handle:
                json.dump(rows, handle, indent=1)
        return rows
    finally:
        if not opts.data_dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
