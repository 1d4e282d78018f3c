"""How long `python -m data.coco_refs` takes on a COCO-2017-sized annotation file, and how much memory.

    python bench/bench_coco_refs.py --out /tmp/coco_bench            # full size: ~118K images, ~860K annotations
    python bench/bench_coco_refs.py --out /tmp/coco_bench --scale 0.05 --baseline

Writes a synthetic COCO-format train file of COCO's size and shape (80 categories, ~7.3
annotations an image, polygons of ~30 points, 1% crowd RLEs; ~450 MB) and a val file of
val2017's size, then runs the builder in a child process and reports its wall time and peak
resident memory (ru_maxrss). `--baseline` also measures a plain `json.load` of the train file,
what a non-streaming reader would hold at least. No images are written (the builder only links
the image folders).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.coco_refs.lexicon import SYNONYMS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IMAGES, TRAIN_ANNS, VAL_IMAGES, VAL_ANNS = 118287, 860001, 5000, 36781


def _polygon_pool(rng, count: int = 4096) -> list:
    """Polygon strings of 16-44 points on a unit-ish outline, reused across annotations (content
    does not matter to the builder: it reads boxes and areas, and copies segmentations)."""
    pool = []
    for _ in range(count):
        n = int(rng.integers(16, 45))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(40, 120, n)
        xy = np.stack([320 + r * np.cos(t), 240 + r * np.sin(t)], 1).reshape(-1)
        pool.append("[[" + ",".join(f"{v:.2f}" for v in xy) + "]]")
    return pool


def write_coco_file(path: str, num_images: int, num_anns: int, seed: int, first_image: int, first_ann: int) -> None:
    rng = np.random.default_rng(seed)
    pool = _polygon_pool(rng)
    names = list(SYNONYMS)
    # A skewed category mix, like COCO's (person is ~30% of instances).
    weights = np.r_[30.0, rng.uniform(0.2, 2.5, len(names) - 1)]
    cats = rng.choice(len(names), num_anns, p=weights / weights.sum()) + 1
    image_of = np.sort(rng.integers(0, num_images, num_anns)) + first_image
    w = rng.uniform(8, 400, num_anns)
    h = rng.uniform(8, 300, num_anns)
    x = rng.uniform(0, 640 - w)
    y = rng.uniform(0, 480 - h)
    crowd = rng.random(num_anns) < 0.01
    polygon = rng.integers(0, len(pool), num_anns)
    crowd_counts = "[" + ",".join(str(v) for v in rng.integers(1, 3000, 200)) + "]"
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"info":{"description":"bench"},"licenses":[],"images":[')
        out.write(",".join(f'{{"license":1,"file_name":"{i:012d}.jpg","height":480,"width":640,"id":{i}}}'
                           for i in range(first_image, first_image + num_images)))
        out.write('],"annotations":[')
        for k in range(num_anns):
            seg = (f'{{"counts":{crowd_counts},"size":[480,640]}}' if crowd[k] else pool[polygon[k]])
            out.write(("," if k else "") + f'{{"segmentation":{seg},"area":{0.6 * w[k] * h[k]:.1f},'
                      f'"iscrowd":{int(crowd[k])},"image_id":{image_of[k]},'
                      f'"bbox":[{x[k]:.2f},{y[k]:.2f},{w[k]:.2f},{h[k]:.2f}],'
                      f'"category_id":{cats[k]},"id":{first_ann + k}}}')
        out.write('],"categories":' + json.dumps([{"supercategory": "thing", "id": i + 1, "name": n}
                                                   for i, n in enumerate(names)]) + "}")


def measured(code: str) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB) of `code` run in a child Python, which reports its own
    ru_maxrss (RUSAGE_CHILDREN would give the largest of all children so far)."""
    started = time.perf_counter()
    probe = "\nimport resource, sys; sys.stderr.write('PEAK_KIB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    result = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"{code} failed:\n{result.stderr[-3000:]}")
    peak = int(result.stderr.rsplit("PEAK_KIB ", 1)[1].split()[0])
    return seconds, peak / 1024, result.stdout


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the annotation files and the generated set")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO 2017's size")
    parser.add_argument("--baseline", action="store_true", help="also measure json.load of the train file")
    args = parser.parse_args(argv)
    coco = os.path.join(args.out, "coco")
    os.makedirs(os.path.join(coco, "annotations"), exist_ok=True)
    sizes = {"train": (max(1, int(TRAIN_IMAGES * args.scale)), max(1, int(TRAIN_ANNS * args.scale))),
             "val": (max(1, int(VAL_IMAGES * args.scale)), max(1, int(VAL_ANNS * args.scale)))}
    started = time.perf_counter()
    for split, (images, anns) in sizes.items():
        write_coco_file(os.path.join(coco, "annotations", f"instances_{split}2017.json"), images, anns,
                        seed=len(split), first_image=1 if split == "train" else 10**7,
                        first_ann=1 if split == "train" else 10**8)
    generated = time.perf_counter() - started
    train = os.path.join(coco, "annotations", "instances_train2017.json")
    report = {"scale": args.scale, "train_images": sizes["train"][0], "train_annotations": sizes["train"][1],
              "train_file_mb": os.path.getsize(train) / 2**20, "generate_files_s": generated,
              "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
              "load_average_before": os.getloadavg(), "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
              "date": time.strftime("%Y-%m-%d")}
    print(f"annotation files written in {generated:.1f} s (train {report['train_file_mb']:.0f} MB)", flush=True)
    argv = ["--coco", coco, "--root", os.path.join(args.out, "data"), "--no-progress"]
    report["build_s"], report["build_peak_mib"], stdout = measured(
        f"from data.coco_refs.__main__ import main; main({argv!r})")
    print(stdout)
    if args.baseline:
        report["json_load_s"], report["json_load_peak_mib"], _ = measured(f"import json; json.load(open({train!r}))")
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
