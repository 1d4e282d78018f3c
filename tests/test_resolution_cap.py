"""bench/resolution_cap.py: the best mask a stride-4 logit map can give, and the cap it reports."""
import torch

from bench.resolution_cap import best_stride_masks, cap, main


def square(size, top, left, side):
    target = torch.zeros(size, size)
    target[top:top + side, left:left + side] = 1
    return target


def test_large_objects_are_reachable_and_tiny_ones_are_not():
    targets = torch.stack([square(32, 4, 4, 16), square(32, 0, 0, 32), square(32, 13, 17, 1)])
    masks = best_stride_masks(targets, steps=300)
    found = [cap(targets[i:i + 1], masks[i:i + 1], torch.ones(1))["mean_iou"] for i in range(3)]
    assert found[0] > 0.9 and found[1] == 1.0
    assert found[2] < 1.0  # one pixel cannot be outlined from an 8 x 8 grid upsampled bilinearly


def test_cap_counts_each_object_once_per_expression():
    targets = torch.stack([square(8, 0, 0, 4), square(8, 0, 0, 4)])
    masks = torch.stack([targets[0] > 0, torch.zeros(8, 8, dtype=torch.bool)])
    assert cap(targets, masks, torch.tensor([3, 1]))["mean_iou"] == 0.75
    assert cap(targets, masks, torch.tensor([1, 1]))["precision@0.9"] == 0.5


def test_script_reports_a_cap_per_size_on_a_generated_set(generated_set, capsys):
    root = generated_set(dataset="synref", num_images=6, img_size=64, seed=3)
    main(["--refer_data_root", str(root), "--split", "val", "--sizes", "32", "64", "--steps", "50", "--threads", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 32 ") or line.startswith("| 64 ")]
    caps = [float(row.split("|")[3]) for row in rows]
    assert len(caps) == 2 and 0 < caps[0] < caps[1] <= 100  # a larger input size outlines more exactly
