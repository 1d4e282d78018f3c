"""Checkpoint I/O tests: released-format round trips (lavt, lavt_one, DDP prefixes), refusal of pickled
code, truncated / missing files, mismatch reports, atomic saving under injected failures, and
pretrained Swin weights in the official and timm layouts (checked numerically against timm)."""
import argparse
import os
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from lib.backbone import shifted_window_mask
from lib.checkpoint import load_lavt_checkpoint
from lib.checkpoint_io import atomic_torch_save, load_checkpoint_file, save_checkpoint
from lib.segmentation import build_lavt
from lib.state_dict import CheckpointError
from lib.swin_weights import (
    format_load_report,
    is_timm_swin_state_dict,
    load_pretrained_swin,
    resize_relative_position_bias_table,
    timm_to_official_swin,
)

TINY = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])


def tiny_bert(pooler=False, layers=2, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=24)
    return BertModel(config, add_pooling_layer=pooler)


def tiny_lavt(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_lavt(**{**TINY, "text_dim": 32, **overrides})


def assert_same_state(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def training_state(model, bert):
    params = list(model.parameters()) + list(bert.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 - it / 10) ** 0.9)
    params[0].grad = torch.ones_like(params[0])
    optimizer.step()
    scheduler.step()
    return optimizer, scheduler


# ------------------------------------------------------------------------------------- round trips
def test_lavt_round_trip_in_the_released_format(tmp_path):
    model, bert = tiny_lavt(seed=0), tiny_bert(pooler=True, seed=1)
    optimizer, scheduler = training_state(model, bert)
    args = argparse.Namespace(model="lavt", swin_type="nano", lr=5e-5, window12=False, mha="")
    path = tmp_path / "model_best_x.pth"
    save_checkpoint(path, model=nn.DataParallel(model), bert_model=bert, optimizer=optimizer, epoch=7, args=args,
                    lr_scheduler=scheduler, rng_state=torch.get_rng_state(), best_oiou=61.5,
                    scaler={"scale": 1024.0, "growth_tracker": 3})

    checkpoint = load_checkpoint_file(path)  # weights_only, Namespace allowed
    assert set(checkpoint) == {"model", "bert_model", "optimizer", "epoch", "args", "lr_scheduler", "rng_state",
                               "best_oiou", "scaler", "content_sha256"}  # the hash: issue 19
    assert checkpoint["args"] == args and checkpoint["epoch"] == 7 and checkpoint["best_oiou"] == 61.5
    assert not any(k.startswith("module.") for k in checkpoint["model"])  # DataParallel prefix removed
    assert any(k.startswith("pooler.") for k in checkpoint["bert_model"])

    fresh, fresh_bert = tiny_lavt(seed=5), tiny_bert(seed=6)  # BERT without pooler: pooler.* ignored
    summary = load_lavt_checkpoint(fresh, checkpoint, bert_model=fresh_bert)
    assert summary["variant"] == "lavt" and summary["epoch"] == 7
    assert_same_state(fresh, model)
    fresh_bert_state = fresh_bert.state_dict()
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in fresh_bert_state.items())
    new_optimizer, _ = training_state(tiny_lavt(), tiny_bert(pooler=True))
    new_optimizer.load_state_dict(checkpoint["optimizer"])
    assert new_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]


def test_ddp_prefixed_released_checkpoint_loads(tmp_path):
    model, bert = tiny_lavt(seed=0), tiny_bert(seed=1)
    released = {"model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "bert_model": {f"module.{k}": v for k, v in bert.state_dict().items()},
                "epoch": 39, "args": argparse.Namespace(ddp_trained_weights=True)}
    torch.save(released, tmp_path / "refcoco.pth")
    fresh, fresh_bert = tiny_lavt(seed=3), tiny_bert(seed=4)
    load_lavt_checkpoint(fresh, str(tmp_path / "refcoco.pth"), bert_model=fresh_bert)
    assert_same_state(fresh, model)
    assert_same_state(fresh_bert, bert)
    # A bare state dict works too.
    bare = tiny_lavt(seed=9)
    load_lavt_checkpoint(bare, model.state_dict())
    assert_same_state(bare, model)


def test_lavt_one_round_trip_and_variant_hints(tmp_path):
    one = tiny_lavt(seed=0, text_encoder=tiny_bert(seed=1))
    save_checkpoint(tmp_path / "one.pth", model=one, epoch=0, args={"model": "lavt_one"})
    checkpoint = load_checkpoint_file(tmp_path / "one.pth")
    assert isinstance(checkpoint["args"], argparse.Namespace) and "bert_model" not in checkpoint
    fresh = tiny_lavt(seed=2, text_encoder=tiny_bert(seed=3))
    assert load_lavt_checkpoint(fresh, tmp_path / "one.pth")["variant"] == "lavt_one"
    assert_same_state(fresh, one)

    with pytest.raises(CheckpointError, match="lavt_one checkpoint.*--model lavt_one") as err:
        load_lavt_checkpoint(tiny_lavt(), tmp_path / "one.pth")
    assert str(tmp_path / "one.pth") in str(err.value) and "unexpected" in str(err.value)
    save_checkpoint(tmp_path / "lavt.pth", model=tiny_lavt(), bert_model=tiny_bert())
    with pytest.raises(CheckpointError, match="this is a lavt checkpoint.*--model lavt"):
        load_lavt_checkpoint(fresh, tmp_path / "lavt.pth")


# ------------------------------------------------------------------------------ unsafe / broken files
class Payload:
    """Would create a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_lavt().state_dict(), "args": argparse.Namespace(lr=1.0), "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path, what="--resume")
    message = str(err.value)
    assert str(path) in message and "--resume" in message and "open" in message and "safety" in message
    with pytest.raises(CheckpointError):
        load_lavt_checkpoint(tiny_lavt(), path)
    with pytest.raises(CheckpointError, match="safety"):
        load_pretrained_swin(tiny_lavt().backbone, path)
    assert not os.path.exists(marker)

    # Saving refuses such objects before anything is written.
    with pytest.raises(TypeError, match="'x'.*Payload"):
        save_checkpoint(tmp_path / "out.pth", model=tiny_lavt(), x=Payload(marker))
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="rng.*numpy.*torch.from_numpy"):
        save_checkpoint(tmp_path / "out.pth", model=tiny_lavt(), rng={"numpy": np.zeros(3)})
    with pytest.raises(TypeError, match="best.*numpy.float64"):  # a float subclass, still refused on load
        save_checkpoint(tmp_path / "out.pth", model=tiny_lavt(), best=np.float64(0.5))
    assert sorted(os.listdir(tmp_path)) == ["evil.pth"]


def test_saving_and_loading_allow_the_same_types(tmp_path):
    """One definition of what a checkpoint may hold: all of it round-trips, the rest is refused both ways."""
    allowed = {"str": "a", "bytes": b"b", "bytearray": bytearray(b"c"), "int": 3, "float": 0.5, "complex": 1j,
               "bool": True, "none": None, "dtype": torch.bfloat16, "device": torch.device("cpu"),
               "size": torch.Size([2, 3]), "ordered": OrderedDict(a=torch.ones(2)), "list": [1, [2.0]],
               "tuple": (1, "x"), "set": {4, 5}, "args": argparse.Namespace(lr=1e-4, sizes=[480])}
    atomic_torch_save(allowed, tmp_path / "ok.pth")
    loaded = load_checkpoint_file(tmp_path / "ok.pth")
    assert loaded.keys() == allowed.keys() and torch.equal(loaded["ordered"]["a"], allowed["ordered"]["a"])
    assert all(loaded[k] == v for k, v in allowed.items() if k != "ordered")

    refused = {"values": [1, frozenset({2})]}  # a container type outside the definition
    with pytest.raises(TypeError, match=re.escape("checkpoint['values'][1] is a builtins.frozenset")):
        atomic_torch_save(refused, tmp_path / "refused.pth")
    assert not (tmp_path / "refused.pth").exists()
    torch.save(refused, tmp_path / "foreign.pth")  # written by someone else: the loader refuses it too
    with pytest.raises(CheckpointError, match="frozenset"):
        load_checkpoint_file(tmp_path / "foreign.pth")


def test_truncated_corrupt_and_missing_files(tmp_path):
    path = tmp_path / "ok.pth"
    save_checkpoint(path, model=tiny_lavt(), epoch=1)
    data = path.read_bytes()
    for name, content in [("half.pth", data[: len(data) // 2]), ("text.pth", b"not a checkpoint"),
                          ("tail.pth", data[:-200])]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
            load_checkpoint_file(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no raw zip/pickle traceback
    missing = tmp_path / "nope" / "checkpoint.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as err:
        load_checkpoint_file(missing, what="--resume")
    assert "--resume" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_lavt_checkpoint(tiny_lavt(), missing)


# --------------------------------------------------------------------------------------- mismatches
def test_mismatched_checkpoints_are_reported_with_hints(tmp_path):
    path = tmp_path / "w7.pth"
    save_checkpoint(path, model=tiny_lavt(), bert_model=tiny_bert())

    with pytest.raises(CheckpointError) as err:
        load_lavt_checkpoint(tiny_lavt(window_size=12), path, bert_model=tiny_bert())
    message = str(err.value)
    assert str(path) in message and "mis-shaped" in message
    assert "backbone.layers.0.blocks.0.attn.relative_position_bias_table: (169, 1) in the checkpoint, (529, 1)" in message
    assert "window 7" in message and "drop --window12" in message

    save_checkpoint(tmp_path / "w12.pth", model=tiny_lavt(window_size=12), bert_model=tiny_bert())
    with pytest.raises(CheckpointError, match="window 12.*pass --window12"):
        load_lavt_checkpoint(tiny_lavt(), tmp_path / "w12.pth", bert_model=tiny_bert())

    deeper = tiny_lavt(depths=[2, 2, 2, 2])
    with pytest.raises(CheckpointError) as err:
        load_lavt_checkpoint(deeper, path, bert_model=tiny_bert())
    message = str(err.value)
    assert "missing key(s)" in message and "backbone.layers.0.blocks.1.norm1.weight" in message
    assert "depths 1-1-1-1" in message and "depths 2-2-2-2" in message
    assert "56 missing key(s)" in message and "... and 48 more" in message  # long lists are cut, with a count

    with pytest.raises(CheckpointError, match="32-wide text features") as err:
        load_lavt_checkpoint(tiny_lavt(text_dim=24), path, bert_model=tiny_bert())
    with pytest.raises(CheckpointError, match="(?s)in bert_model.*BERT has 2 layers") as err:
        load_lavt_checkpoint(tiny_lavt(), path, bert_model=tiny_bert(layers=3))
    with pytest.raises(CheckpointError, match="bert_model="):
        load_lavt_checkpoint(tiny_lavt(), path)  # BERT weights would be silently dropped

    # Nothing was loaded by a failed strict load; non-strict loads what matches and reports the rest.
    model = tiny_lavt(seed=3, depths=[2, 1, 1, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_lavt_checkpoint(model, path, bert_model=tiny_bert())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    summary = load_lavt_checkpoint(model, path, bert_model=tiny_bert(), strict=False)
    assert "backbone.layers.0.blocks.1.norm1.weight" in summary["not_loaded"]["model"]["missing"]
    assert torch.equal(model.classifier.conv1_1.weight, tiny_lavt().classifier.conv1_1.weight)


# ------------------------------------------------------------------------------------ atomic saving
@pytest.mark.parametrize("failure", ["torch.save", "os.fsync", "os.replace"])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "checkpoint_last.pth"
    old = tiny_lavt(seed=0)
    save_checkpoint(path, model=old, epoch=1)

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    def broken(*args, **kwargs):
        raise OSError(f"injected {failure} failure")

    module, name = failure.split(".")
    monkeypatch.setattr({"torch": torch, "os": os}[module], name, broken_save if name == "save" else broken)
    with pytest.raises(OSError):
        save_checkpoint(path, model=tiny_lavt(seed=1), epoch=2)
    monkeypatch.undo()

    assert os.listdir(tmp_path) == ["checkpoint_last.pth"]  # no temp file left behind
    checkpoint = load_checkpoint_file(path)
    assert checkpoint["epoch"] == 1
    restored = tiny_lavt(seed=2)
    load_lavt_checkpoint(restored, checkpoint)
    assert_same_state(restored, old)


def test_save_reports_unusable_directories(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing_dir"))):
        save_checkpoint(tmp_path / "missing_dir" / "c.pth", model=tiny_lavt())

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(PermissionError, match=f"'{re.escape(str(tmp_path))}' is not writable"):
        save_checkpoint(tmp_path / "c.pth", model=tiny_lavt())


# ---------------------------------------------------------------------------- pretrained Swin weights
def official_swin_state_dict(backbone):
    """What a Swin classification checkpoint holds: no fusion / gates / norm0-3, plus head, norm, masks."""
    state = {k: v.clone() for k, v in backbone.state_dict().items()
             if not re.search(r"\.fusion\.|\.res_gate\.|^norm\d", k)}
    state.update({"norm.weight": torch.ones(128), "norm.bias": torch.zeros(128),
                  "head.weight": torch.randn(10, 128), "head.bias": torch.zeros(10),
                  "layers.0.blocks.1.attn_mask": torch.zeros(4, 49, 49)})
    return state


def test_official_swin_weights_window7_into_window12(tmp_path):
    torch.manual_seed(0)
    source = build_lavt(**TINY, window_size=7, text_dim=8).backbone
    state = official_swin_state_dict(source)
    state["layers.0.blocks.0.attn.relative_position_bias_table"].fill_(0.5)
    rows = torch.arange(13.0).repeat_interleave(13)  # value = vertical offset dy only
    state["layers.1.blocks.0.attn.relative_position_bias_table"] = torch.stack([rows, -rows], 1)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "swin_w7.pth")

    target = build_lavt(**TINY, window_size=12, text_dim=8).backbone
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_pretrained_swin(target, str(tmp_path / "swin_w7.pth"))
    after = target.state_dict()

    tables = [k for k in after if k.endswith("relative_position_bias_table")]
    assert sorted(report["resized"]) == sorted(tables)
    for key in tables:
        assert after[key].shape == (23 * 23, after[key].shape[1])
        assert torch.allclose(after[key], resize_relative_position_bias_table(state[key], 23))
    assert torch.allclose(after["layers.0.blocks.0.attn.relative_position_bias_table"], torch.tensor(0.5))
    resized = after["layers.1.blocks.0.attn.relative_position_bias_table"].t().reshape(2, 23, 23)
    assert torch.allclose(resized, resized[:, :, :1].expand(-1, -1, 23))  # still varies along dy only
    assert torch.allclose(resized[0], -resized[1]) and resized[0, -1, 0] > resized[0, 0, 0]
    for key, value in state.items():
        if key in after and "relative_position" not in key:
            assert torch.equal(after[key], value), key
    assert torch.equal(after["layers.0.blocks.0.attn.relative_position_index"],
                       before["layers.0.blocks.0.attn.relative_position_index"])  # ours, for window 12
    for key in report["missing"]:
        assert torch.equal(after[key], before[key])
    assert "layers.2.fusion.vis_project.0.weight" in report["missing"] and "norm3.bias" in report["missing"]
    assert not any("blocks" in k or "downsample" in k for k in report["missing"])
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias"} <= set(report["skipped_unexpected"])
    assert "layers.0.blocks.1.attn_mask" in report["dropped_buffers"] and report["format"] == "official"
    text = format_load_report(report)
    assert "loaded" in text and "(169, 1) -> (529, 1)" in text and "layers.*.fusion.*" in text and "head.weight" in text


def test_shape_mismatch_other_than_tables_is_skipped():
    torch.manual_seed(0)
    state = official_swin_state_dict(build_lavt(**TINY, text_dim=8).backbone)
    state["layers.0.blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    target = build_lavt(**TINY, text_dim=8).backbone
    report = load_pretrained_swin(target, {"state_dict": state})
    assert report["skipped_shape"] == {"layers.0.blocks.0.mlp.fc1.weight": ((3, 3), (64, 16))}
    assert "layers.0.blocks.0.mlp.fc1.weight" in report["missing"]
    with pytest.raises(CheckpointError, match="matches the backbone"):
        load_pretrained_swin(target, {"model": {"conv.weight": torch.zeros(1)}})


def timm_swin():
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    # Window 2 keeps every stage (16, 8, 4, 2 tokens wide) at least one window wide, so timm does
    # not shrink windows and all relative position tables have our shapes.
    model = timm_swin.SwinTransformer(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 2, 2),
                                      num_heads=(1, 2, 4, 8), window_size=2, num_classes=5).eval()
    with torch.no_grad():  # random norms, so a wrong 4C order in patch merging would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_()
    return model


def test_timm_key_mapping():
    state = timm_swin().state_dict()
    assert is_timm_swin_state_dict(state) and not is_timm_swin_state_dict(timm_to_official_swin(state))
    mapped = timm_to_official_swin(state)
    for i in range(3):
        for suffix in ("norm.weight", "norm.bias", "reduction.weight"):
            assert mapped[f"layers.{i}.downsample.{suffix}"] is state[f"layers.{i + 1}.downsample.{suffix}"]
    assert not any(k.startswith(("head.", "layers.3.downsample")) for k in mapped)
    assert set(mapped) == {k for k in state if not k.startswith(("head.", "layers.3.downsample", "layers.1.down",
                                                                   "layers.2.down"))} | {
        f"layers.{i}.downsample.{s}" for i in range(3) for s in ("norm.weight", "norm.bias", "reduction.weight")}


def test_timm_weights_compute_what_timm_computes(tmp_path):
    """Stage 0-1 blocks and patch merging, loaded from a timm Swin, match timm's own modules."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    timm_model = timm_swin()
    safetensors_torch.save_file(timm_model.state_dict(), str(tmp_path / "model.safetensors"))
    backbone = build_lavt(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=2,
                          text_dim=8).backbone.eval()
    report = load_pretrained_swin(backbone, tmp_path / "model.safetensors")
    assert report["format"] == "timm" and not report["skipped_shape"] and not report["resized"]
    assert {"head.fc.weight", "norm.weight"} <= set(report["skipped_unexpected"])
    assert len(report["loaded"]) == len(timm_model.state_dict()) - 4  # all but head.fc.*, norm.*

    torch.manual_seed(1)
    with torch.no_grad():
        for height, width in [(6, 6), (5, 7)]:  # patch merging alone, even and odd sizes
            x = torch.randn(2, height, width, 32)
            ours = backbone.layers[1].downsample(x.flatten(1, 2), height, width)
            theirs = timm_model.layers[2].downsample(x)
            assert torch.allclose(ours, theirs.flatten(1, 2), atol=1e-5)

        image = torch.randn(2, 3, 64, 64)
        x, height, width = backbone.patch_embed(image)
        theirs = timm_model.patch_embed(image)  # (B, H, W, C)
        assert torch.allclose(x, theirs.flatten(1, 2), atol=1e-5)
        for stage in range(2):
            mask = shifted_window_mask(height, width, 2, 1)
            for block in backbone.layers[stage].blocks:
                x = block(x, height, width, mask)
            theirs = timm_model.layers[stage].blocks(theirs)  # timm stages start with the merging
            assert torch.allclose(x, theirs.flatten(1, 2), atol=1e-4), f"stage {stage} blocks"
            x = backbone.layers[stage].downsample(x, height, width)
            height, width = (height + 1) // 2, (width + 1) // 2
            theirs = timm_model.layers[stage + 1].downsample(theirs)
            assert torch.allclose(x, theirs.flatten(1, 2), atol=1e-4), f"stage {stage} patch merging"


def test_reference_state_dict_in_the_released_layout_loads_strictly():
    reference = load_checkpoint_file(os.path.join(os.path.dirname(__file__), "fixtures", "nano_lavt_eval.pt"))
    config = reference["config"]
    model = build_lavt(config["embed_dim"], config["depths"], config["num_heads"], config["window_size"],
                       fusion_heads=config["num_heads_fusion"], text_dim=config["text_dim"])
    released = {"model": {f"module.{k}": v for k, v in reference["state_dict"].items()}, "epoch": 39}
    assert load_lavt_checkpoint(model, released)["loaded"] == len(reference["state_dict"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference["state_dict"][key]), key
