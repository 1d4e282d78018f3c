"""The worked example of docs/extending.md, run as a test: a new fusion module with a hyperparameter
registered through the public route (`lib.fusion.register_fusion`), built into a nano LAVT, trained one
step, saved with `save_checkpoint`, loaded with `load_lavt_checkpoint` and evaluated; then trained by
train.py with a non-default `--fusion-kwargs`, evaluated by test.py and run by the Predictor, both of
which read the fusion and its option off the checkpoint. Also: a module in the lib/fusion package is
registered by the package itself."""
import argparse
import json
import os
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lib.fusion
from args import get_test_parser, get_train_parser
from errors import UserInputError
from lib.checkpoint import load_lavt_checkpoint
from lib.checkpoint_io import load_checkpoint_file, save_checkpoint
from lib.criterion import build_criterion
from lib.fusion import FUSION_LAYERS, import_fusion_modules, register_fusion
from lib.predictor import Predictor
from lib.segmentation import SWIN_CONFIGS, build_lavt
from lib.state_dict import CheckpointError
from tests.nano_models import EXPRESSIONS, write_blocks_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_ROOT = os.path.join(REPO, "tests", "fixtures", "refer_fixture")


# --- the example, as printed in docs/extending.md -------------------------------------------------
@register_fusion("film")
class FiLMFusion(nn.Module):
    """Feature-wise linear modulation by the sentence: F = GELU(x * (1 + gamma(s)) + beta(s)),
    s = mean of the real words' features."""

    def __init__(self, dim, text_dim, num_heads=1, dropout=0.0, scale=1.0):
        super().__init__()
        self.scale = scale  # its own option: --fusion-kwargs scale=0.5
        self.to_gamma_beta = nn.Linear(text_dim, 2 * dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, l_feats, l_mask):
        """x (B, HW, C), l_feats (B, C_t, N_l), l_mask (B, N_l, 1) -> (B, HW, C)."""
        mask = l_mask.to(x.dtype)
        sentence = (l_feats.transpose(1, 2) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, C_t)
        gamma, beta = (self.scale * self.to_gamma_beta(sentence)[:, None]).chunk(2, dim=-1)  # (B, 1, C) each
        return self.dropout(F.gelu(x * (1 + gamma) + beta))
# ---------------------------------------------------------------------------------------------------


def nano(fusion):
    embed_dim, depths, num_heads = SWIN_CONFIGS["nano"]
    return build_lavt(embed_dim, depths, num_heads, window_size=4, text_dim=384, fusion_layer=fusion)


def batch(seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    words = torch.randn(4, 384, 8, generator=generator)
    l_mask = (torch.arange(8) < torch.tensor([[3], [8], [5], [2]])).long().unsqueeze(-1)  # real words first
    targets = torch.zeros(4, 64, 64, dtype=torch.long)
    targets[:, 16:48, 8:40] = 1
    return images, words, l_mask, targets


@pytest.mark.slow
def test_worked_example_trains_saves_loads_and_evaluates(tmp_path):
    torch.manual_seed(0)
    model = nano("film").train()
    assert all(isinstance(stage.fusion, FiLMFusion) for stage in model.backbone.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = build_criterion("ce")
    images, words, l_mask, targets = batch(0)
    before = model.backbone.layers[2].fusion.to_gamma_beta.weight.detach().clone()

    loss = criterion({"logits": model(images, words, l_mask)}, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.backbone.layers[2].fusion.to_gamma_beta.weight, before)

    path = tmp_path / "film_nano.pth"
    args = argparse.Namespace(model="lavt", swin_type="nano", window_size=4, fusion="film", ck_bert="minilm")
    save_checkpoint(path, model=model, optimizer=optimizer, epoch=0, args=args)
    reloaded = nano("film")
    load_lavt_checkpoint(reloaded, str(path))

    model.eval()
    reloaded.eval()
    images, words, l_mask, _ = batch(1)
    with torch.no_grad():
        logits = model(images, words, l_mask)
        assert torch.equal(reloaded(images, words, l_mask), logits)
        # Evaluation reads the words through the new fusion: other sentences, other masks.
        assert (reloaded(images, words.flip(0), l_mask.flip(0)) - logits).abs().max() > 1e-4

    # The checkpoint names its fusion's tensors: the released PWAM model refuses it, naming them.
    with pytest.raises(CheckpointError, match="to_gamma_beta"):
        load_lavt_checkpoint(nano("pwam"), str(path))


def flags():
    return ["--device", "cpu", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
            "--refer_data_root", FIXTURE_ROOT, "--dataset", "refcoco", "--img_size", "64", "--workers", "0",
            "--print-freq", "50"]


def script(name):
    return runpy.run_path(os.path.join(REPO, name), run_name="cli_under_test")["main"]


@pytest.mark.slow
def test_fusion_option_goes_from_train_py_through_test_py_to_the_predictor(tmp_path, capsys):
    out = tmp_path / "out"
    script("train.py")(get_train_parser().parse_args([
        *flags(), "-b", "2", "--bert-trainable-layers", "1", "--epochs", "1", "--model_id", "film",
        "--run-dir", str(tmp_path / "run"), "--output-dir", str(out), "--fusion", "film",
        "--fusion-kwargs", "scale=0.5"]))
    checkpoint = out / "model_best_film.pth"
    saved = load_checkpoint_file(checkpoint)["args"]
    assert (saved.fusion, saved.fusion_kwargs) == ("film", {"scale": 0.5})

    # test.py: no --fusion, no --fusion-kwargs; both come from the checkpoint.
    results = tmp_path / "r.json"
    script("test.py")(get_test_parser().parse_args([*flags(), "--resume", str(checkpoint), "--split", "val",
                                                    "--results-json", str(results)]))
    assert json.loads(results.read_text())["num_samples"] > 0
    # Another value contradicts what the model was trained with.
    with pytest.raises(UserInputError, match=r"fusion_kwargs=\{'scale': 2\}.*fusion_kwargs=\{'scale': 0\.5\}"):
        script("test.py")(get_test_parser().parse_args([*flags(), "--resume", str(checkpoint), "--split", "val",
                                                        "--fusion-kwargs", "scale=2"]))

    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.args.fusion_kwargs == {"scale": 0.5}
    assert {stage.fusion.scale for stage in predictor.model.model.backbone.layers} == {0.5}
    predictions = predictor.predict(write_blocks_image(tmp_path / "blocks.png"), EXPRESSIONS)
    assert len(predictions) == len(EXPRESSIONS)


def test_a_fusion_option_it_does_not_take_is_named():
    from lib.fusion import fusion_with_options

    with pytest.raises(UserInputError, match="takes no option 'gain'; its own options are scale"):
        fusion_with_options("film", {"gain": 2})
    assert fusion_with_options("film", {"scale": 0.5})(32, 384).scale == 0.5


DISCOVERED = """
from torch import nn

from lib.fusion import register_fusion


@register_fusion("test_discovered")
class DiscoveredFusion(nn.Module):
    def __init__(self, dim, text_dim, num_heads=1, dropout=0.0, width=1):
        super().__init__()
        self.width = width

    def forward(self, x, l_feats, l_mask):
        return x
"""


def test_a_module_in_the_fusion_package_is_registered_by_the_package(tmp_path, monkeypatch):
    """The package imports every module on its path: a new file needs no import added anywhere."""
    (tmp_path / "discovered_fusion.py").write_text(DISCOVERED)
    monkeypatch.setattr(lib.fusion, "__path__", [*lib.fusion.__path__, str(tmp_path)])
    monkeypatch.delitem(FUSION_LAYERS, "test_discovered", raising=False)
    import_fusion_modules()
    assert FUSION_LAYERS["test_discovered"].__name__ == "DiscoveredFusion"
    FUSION_LAYERS.pop("test_discovered")
