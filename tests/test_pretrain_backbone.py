"""tools/pretrain_backbone.py: scenes without testC pairs, official-layout output that
--pretrained_swin_weights loads unchanged, and the shipped nano weights."""
import argparse
import os
import sys

import numpy as np
import pytest
import torch

from data.synthetic.sampling import sample_scene
from data.synthetic.writer import HELD_OUT_DESIGN, held_out_pairs
from lib.checkpoint_io import load_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import pretrain_backbone  # noqa: E402

SHIPPED_DIR = os.path.join(REPO, "pretrained_weights")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_held_out_pairs_are_one_design_for_every_seed():
    for seed in (0, 3, 11):
        pairs = held_out_pairs(np.random.default_rng(seed), 6)
        assert pairs == list(HELD_OUT_DESIGN[:6])
    colours, shapes = zip(*HELD_OUT_DESIGN)
    assert len(set(colours)) == len(set(shapes)) == len(HELD_OUT_DESIGN) == 8


def test_avoided_pairs_never_appear_in_a_scene():
    avoid = HELD_OUT_DESIGN
    seen = set()
    for index in range(40):
        scene, _, _, _ = sample_scene(np.random.default_rng([5, index]), 64, avoid=avoid)
        pairs = {(o["colour"], o["shape"]) for o in scene["objects"]}
        assert not pairs & set(avoid), pairs & set(avoid)
        seen |= pairs
    # Without `avoid`, the same streams do produce design pairs: the option is what removes them.
    unfiltered = {(o["colour"], o["shape"]) for index in range(40)
                  for o in sample_scene(np.random.default_rng([5, index]), 64)[0]["objects"]}
    assert unfiltered & set(avoid)
    assert len(seen) > 20


def test_labels_follow_the_visible_objects():
    image, labels = pretrain_backbone.make_scene(seed=1, index=0, gen_size=64, size=32)
    assert image.shape == (32, 32, 3) and labels.shape == (3, 32, 32)
    foreground = labels[0] > 0
    assert foreground.any() and (~foreground).any()
    # Every task labels the same pixels as object pixels.
    assert np.array_equal(labels[1] > 0, foreground) and np.array_equal(labels[2] > 0, foreground)
    assert labels[0].max() <= 8 and labels[1].max() <= 8 and labels[2].max() <= 2


def test_position_labels_are_the_bins_of_each_object_centre():
    bins, size = 3, 64
    image, labels = pretrain_backbone.make_scene(seed=2, index=4, gen_size=size, size=size, position_bins=bins)
    assert labels.shape == (5, size, size)
    scene, _, _, visible = sample_scene(np.random.default_rng([2, 4, pretrain_backbone.STREAM_KEY]), size,
                                        avoid=HELD_OUT_DESIGN)
    columns = set()
    for obj, mask in zip(scene["objects"], visible, strict=True):
        column, row = min(int(obj["cx"] * bins // size), bins - 1), min(int(obj["cy"] * bins // size), bins - 1)
        assert (labels[3][mask] == column + 1).all() and (labels[4][mask] == row + 1).all()
        columns.add(column)
    assert np.array_equal(labels[3] > 0, labels[0] > 0) and labels[3].max() <= bins
    assert len(columns) > 1  # the case checks more than one bin
    plain = pretrain_backbone.make_scene(seed=2, index=4, gen_size=size, size=size)[1]
    assert np.array_equal(plain, labels[:3])  # the option only adds tasks


def test_object_ranks_count_the_peers_ahead_in_each_direction():
    objects = [{"cx": 10, "cy": 5, "shape": "circle", "colour": "red"},
               {"cx": 3, "cy": 9, "shape": "circle", "colour": "blue"},
               {"cx": 7, "cy": 1, "shape": "star", "colour": "red"},
               {"cx": 12, "cy": 7, "shape": "star", "colour": "red"},
               {"cx": 1, "cy": 3, "shape": "star", "colour": "red"},
               {"cx": 5, "cy": 2, "shape": "heart", "colour": "red"}]
    ranks = pretrain_backbone.object_ranks(objects)
    got = {task: [row[t] for row in ranks] for t, task in enumerate(pretrain_backbone.RANK_TASKS)}
    assert got[("left", "all")] == [4, 2, 4, 4, 1, 3]  # the first is 5th: capped at 4 ("4th or later")
    assert got[("right", "all")] == [2, 4, 3, 1, 4, 4]
    assert got[("top", "all")] == [4, 4, 1, 4, 3, 2]
    assert got[("left", "shape")] == [2, 1, 2, 3, 1, 1]
    assert got[("bottom", "shape")] == [2, 1, 3, 1, 2, 1]
    assert got[("right", "colour")] == [2, 1, 3, 1, 4, 4]
    assert max(max(row) for row in ranks) == pretrain_backbone.MAX_RANK


def test_rank_labels_are_each_object_ranks_and_only_add_tasks():
    size = 64
    image, labels = pretrain_backbone.make_scene(seed=3, index=7, gen_size=size, size=size, position_bins=4,
                                                 rank_tasks=True)
    classes = pretrain_backbone.task_classes(4, rank_tasks=True)
    assert labels.shape == (len(classes), size, size) == (17, size, size)
    scene, _, _, visible = sample_scene(np.random.default_rng([3, 7, pretrain_backbone.STREAM_KEY]), size,
                                        avoid=HELD_OUT_DESIGN)
    for mask, ranks in zip(visible, pretrain_backbone.object_ranks(scene["objects"]), strict=True):
        for t, rank in enumerate(ranks):
            assert (labels[5 + t][mask] == rank).all()
    assert all(labels[t].max() < n for t, n in enumerate(classes.values()))
    plain = pretrain_backbone.make_scene(seed=3, index=7, gen_size=size, size=size, position_bins=4)[1]
    assert np.array_equal(plain, labels[:5])


@pytest.mark.slow
def test_position_bins_train_and_report_column_and_row(tmp_path):
    provenance = pretrain_backbone.main(["--out", str(tmp_path / "swin.pth"), "--num-images", "20", "--epochs", "1",
                                         "--batch-size", "8", "--img-size", "32", "--gen-img-size", "64",
                                         "--position-bins", "4", "--cache", str(tmp_path / "scenes.npz")])
    assert set(provenance["history"][-1]["val_accuracy"]) == {"colour", "shape", "size", "column", "row"}
    # A cache written with position labels is not reused for a run without them (nor the other way).
    again = pretrain_backbone.main(["--out", str(tmp_path / "plain.pth"), "--num-images", "20", "--epochs", "1",
                                    "--batch-size", "8", "--img-size", "32", "--gen-img-size", "64",
                                    "--cache", str(tmp_path / "scenes.npz")])
    assert set(again["history"][-1]["val_accuracy"]) == {"colour", "shape", "size"}
    ranked = pretrain_backbone.main(["--out", str(tmp_path / "ranked.pth"), "--num-images", "20", "--epochs", "1",
                                     "--batch-size", "8", "--img-size", "32", "--gen-img-size", "64", "--rank-tasks"])
    assert list(ranked["history"][-1]["val_accuracy"]) == list(pretrain_backbone.task_classes(0, rank_tasks=True))
    assert ranked["options"]["rank_tasks"] is True


def test_scene_cache_is_reused_only_for_the_same_options(tmp_path, monkeypatch):
    made = []
    real = pretrain_backbone.make_scene
    monkeypatch.setattr(pretrain_backbone, "make_scene", lambda *a, **k: made.append(a) or real(*a, **k))
    base = ["--out", "unused.pth", "--num-images", "20", "--img-size", "32", "--gen-img-size", "64",
            "--cache", str(tmp_path / "scenes.npz")]
    runs = [base + ["--position-bins", "4"], base + ["--position-bins", "4"], base + ["--position-bins", "8"],
            base + ["--position-bins", "8", "--seed", "5"], base + ["--position-bins", "8", "--seed", "5", "--rank-tasks"]]
    outputs = []
    for argv in runs:
        made.clear()
        outputs.append((pretrain_backbone.generate(pretrain_backbone.parse_args(argv)), len(made)))
    assert [count for _, count in outputs] == [20, 0, 20, 20, 20]  # only the identical second run reads the cache
    (images4, labels4), (images8, labels8) = outputs[0][0], outputs[2][0]
    assert np.array_equal(images4, images8) and labels8[:, 3].max() > 4 >= labels4[:, 3].max()
    assert not np.array_equal(outputs[3][0][0], images8)


@pytest.mark.slow
def test_tiny_pretraining_writes_weights_that_pretrained_swin_weights_loads(tmp_path):
    from lib.segmentation import lavt

    out = tmp_path / "swin.pth"
    provenance = pretrain_backbone.main(["--out", str(out), "--num-images", "40", "--epochs", "2",
                                         "--batch-size", "8", "--img-size", "32", "--gen-img-size", "64"])
    assert len(provenance["history"]) == 2 and set(provenance["history"][-1]["val_accuracy"]) == {"colour", "shape", "size"}
    saved = load_checkpoint_file(str(out))
    weights = saved["model"]
    assert not any(".fusion." in k or ".res_gate." in k or k.endswith("relative_position_index") for k in weights)
    options = argparse.Namespace(swin_type="nano", window_size=4, window12=False, mha="", fusion_drop=0.0,
                                 fusion="pwam", drop_path_rate=0.0, ck_bert="minilm", checkpoint_activations=False,
                                 no_target_head=False, pretrained_swin_weights=str(out))
    model = lavt(str(out), options)
    state = model.backbone.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key], value.float()), key
    # The stage norms LAVT's decoder reads come from the file too, not from their initialisation.
    assert not torch.equal(state["norm0.weight"], torch.ones_like(state["norm0.weight"]))


def test_bad_arguments_are_user_errors(tmp_path):
    from errors import UserInputError

    with pytest.raises(UserInputError, match="--num-images"):
        pretrain_backbone.parse_args(["--out", str(tmp_path / "x.pth"), "--num-images", "5"])
    with pytest.raises(UserInputError, match="--epochs"):
        pretrain_backbone.parse_args(["--out", str(tmp_path / "x.pth"), "--epochs", "0"])
    with pytest.raises(UserInputError, match="--position-bins"):
        pretrain_backbone.parse_args(["--out", str(tmp_path / "x.pth"), "--position-bins", "-1"])


@pytest.mark.parametrize("name, position_bins, rank_tasks", [("swin_nano_synref.pth", 0, False),
                                                             ("swin_nano_synref_pos.pth", 4, False),
                                                             ("swin_nano_synref_rank.pth", 4, True)])
def test_shipped_nano_weights_record_their_provenance_and_load(name, position_bins, rank_tasks):
    saved = load_checkpoint_file(os.path.join(SHIPPED_DIR, name))
    provenance = saved["provenance"]
    assert provenance["options"]["swin_type"] == "nano"
    assert provenance["options"].get("position_bins", 0) == position_bins  # the first file predates the option
    assert sorted(map(tuple, provenance["excluded_pairs"])) == sorted(HELD_OUT_DESIGN)
    accuracy = provenance["history"][-1]["val_accuracy"]
    assert accuracy["shape"] > 0.8
    assert ("column" in accuracy) == bool(position_bins)
    if position_bins:
        assert min(accuracy["column"], accuracy["row"]) > 0.8  # chance: 1 / position_bins
    assert provenance["options"].get("rank_tasks", False) == rank_tasks
    if rank_tasks:  # ranks among all objects: 29-30% for the most frequent class
        assert min(accuracy[f"rank_{side}_all"] for side in ("left", "right", "top", "bottom")) > 0.7
    assert "layers.0.blocks.0.attn.qkv.weight" in saved["model"]


def test_swin_lr_scale_slows_only_the_pretrained_swin():
    from lib.referring_model import build_model
    from train import build_param_groups

    model = build_model(argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm", pretrained_swin_weights=""))
    released = build_param_groups(model)
    assert all("lr" not in g for g in released)  # the released groups take the optimizer's rate
    groups = build_param_groups(model, swin_lr=1e-5)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in released)  # every parameter once, none lost
    for name, param in model.model.backbone.named_parameters():
        from_scratch = ".fusion." in name or ".res_gate." in name
        assert lr_of[id(param)] == (1e-3 if from_scratch else 1e-5), name
    assert all(lr_of[id(p)] == 1e-3 for p in model.model.classifier.parameters())


def test_bert_lr_scale_sets_only_the_text_encoder_rate():
    from lib.referring_model import build_model
    from train import build_param_groups, freeze_text_encoder_layers

    model = build_model(argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm", pretrained_swin_weights=""))
    freeze_text_encoder_layers(model.text_encoder, 2)
    optimizer = torch.optim.AdamW(build_param_groups(model, bert_lr=2e-5), lr=1e-3)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    text = [p for p in model.text_encoder.parameters() if p.requires_grad]
    assert text and all(lr_of[id(p)] == 2e-5 for p in text)
    assert all(id(p) not in lr_of for p in model.text_encoder.parameters() if not p.requires_grad)
    assert all(lr_of[id(p)] == 1e-3 for p in model.model.parameters())


def test_bert_lr_scale_reaches_the_optimizer_from_the_command_line():
    from args import get_train_parser
    from lib.referring_model import build_model
    from train import build_optimizer, freeze_text_encoder_layers

    model = build_model(argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm", pretrained_swin_weights=""))
    freeze_text_encoder_layers(model.text_encoder, 6)
    rates = {}
    for scale in ("1", "0.1"):
        args = get_train_parser().parse_args(["--lr", "1e-3", "--bert-lr-scale", scale])
        optimizer = build_optimizer(model, args, torch.device("cpu"))
        rates[scale] = optimizer.param_groups[-1]["lr"]
    assert rates == {"1": 1e-3, "0.1": pytest.approx(1e-4)}
