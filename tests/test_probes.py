"""Language probes (data/probes.py, tools/probes.py) and the training options against the keyword
shortcut (data/expression_augment.py), on a copy of the reference fixture."""
import argparse
import copy
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from bert import load_tokenizer
from data.dataset_refer_bert import ReferDataset, tokenize_expressions
from data.expression_augment import ExpressionAugmentation
from data.probes import category_words, drop_category, rewrite, shuffle_words
from errors import UserInputError
from transforms import get_transform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "refer_fixture")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def data_root(tmp_path):
    """The fixture with one sentence naming its category (with a plural and punctuation)."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURE, root)
    refs_path = root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(refs_path.read_bytes())
    dog = next(r for r in refs if r["split"] == "val" and r["category_id"] == 18 and len(r["sentences"]) > 1)
    dog["sentences"][0]["raw"] = "the Dogs, on the left"
    refs_path.write_bytes(pickle.dumps(refs))
    return root


def dataset(root, split="val"):
    args = argparse.Namespace(refer_data_root=str(root), dataset="refcoco", splitBy="unc", bert_tokenizer="minilm")
    return ReferDataset(args, image_transforms=get_transform(64), split=split, eval_mode=True)


def assert_tokens_are(probed, index, sentences):
    ids, masks = tokenize_expressions(load_tokenizer("minilm"), sentences)
    assert probed.sentences[index] == sentences
    assert torch.equal(torch.cat(probed.input_ids[index]), ids)
    assert torch.equal(torch.cat(probed.attention_masks[index]), masks)


def test_clean_category_and_empty_give_the_model_what_they_promise(data_root):
    clean = dataset(data_root)
    categories = {c["id"]: c["name"] for c in json.loads((data_root / "refcoco" / "instances.json").read_text())["categories"]}
    for probe in ("clean", "category", "empty"):
        probed = rewrite(clean, probe)
        assert probed.ref_ids == clean.ref_ids
        for i, ref_id in enumerate(clean.ref_ids):
            n = len(clean.sentences[i])
            expected = {"clean": clean.sentences[i], "empty": [""] * n,
                        "category": [categories[clean.refer.Refs[ref_id]["category_id"]]] * n}[probe]
            assert_tokens_are(probed, i, expected)
    empty = rewrite(clean, "empty")
    assert empty.input_ids[0][0][0, :3].tolist() == [101, 102, 0]  # [CLS][SEP], no words


def test_swap_uses_another_object_of_the_same_image_and_drops_lonely_objects(data_root):
    for split in ("val", "testA", "testB"):
        clean = dataset(data_root, split)
        swapped = rewrite(clean, "swap")
        refer = clean.refer
        lonely = {r for r in clean.ref_ids if len(refer.imgToRefs[refer.Refs[r]["image_id"]]) < 2}
        assert swapped.ref_ids == [r for r in clean.ref_ids if r not in lonely]
        for i, ref_id in enumerate(swapped.ref_ids):
            ref = refer.Refs[ref_id]
            donors = [r for r in refer.imgToRefs[ref["image_id"]] if r["ref_id"] != ref_id]
            donor_sentences = {s["raw"] for r in donors for s in r["sentences"]}
            assert len(swapped.sentences[i]) == len(ref["sentences"])
            assert set(swapped.sentences[i]) <= donor_sentences
            assert_tokens_are(swapped, i, swapped.sentences[i])


def test_shuffle_is_a_seeded_permutation_of_the_words(data_root):
    clean = dataset(data_root)
    first, again, other = rewrite(clean, "shuffle", seed=1), rewrite(clean, "shuffle", seed=1), rewrite(clean, "shuffle", seed=2)
    assert first.sentences == again.sentences
    changed = 0
    for i, ref_id in enumerate(clean.ref_ids):
        for j, sentence in enumerate(clean.sentences[i]):
            assert sorted(first.sentences[i][j].split()) == sorted(sentence.split())
            assert first.sentences[i][j] == shuffle_words(sentence, 1, ref_id, j)
            changed += first.sentences[i][j] != other.sentences[i][j]
        assert_tokens_are(first, i, first.sentences[i])
    assert changed > 0  # another seed gives another order somewhere


def test_drop_category_removes_the_category_words_plurals_and_synonyms(data_root):
    clean = dataset(data_root)
    dropped = rewrite(clean, "drop-category")
    index = next(i for i, s in enumerate(clean.sentences) if s[0] == "the Dogs, on the left")
    assert dropped.sentences[index][0] == "the on the left"
    assert dropped.sentences[index][1:] == clean.sentences[index][1:]  # no category word there
    words = category_words({"name": "traffic light", "synonyms": ["lamp"]})
    assert drop_category("the Lamps by the traffic lights!", words) == "the by the"


def test_counterfactual_probe_reads_the_generated_file_or_says_where_it_comes_from(data_root):
    clean = dataset(data_root)
    with pytest.raises(UserInputError, match=r"counterfactuals\(unc\)\.json"):
        rewrite(clean, "counterfactual")
    refs = clean.refer.loadRefs(clean.ref_ids)
    table = {str(s["sent_id"]): f"not {s['raw']}" for ref in refs[1:] for s in ref["sentences"]}
    (data_root / "refcoco" / "counterfactuals(unc).json").write_text(json.dumps(table))
    probed = rewrite(clean, "counterfactual")
    assert probed.ref_ids == clean.ref_ids[1:]  # the first object has no counterfactual
    assert probed.sentences == [[f"not {s}" for s in sentences] for sentences in clean.sentences[1:]]


def training_set(root):
    args = argparse.Namespace(refer_data_root=str(root), dataset="refcoco", splitBy="unc", bert_tokenizer="minilm")
    return ReferDataset(args, image_transforms=get_transform(64), split="train")


def test_options_off_leave_training_items_unchanged(data_root):
    base = training_set(data_root)
    wrapped = ExpressionAugmentation(base)
    for i in range(len(base)):
        np.random.seed(i)
        expected = base[i]
        np.random.seed(i)
        got = wrapped[i]
        for a, b in zip(expected, got):
            assert torch.equal(a, b)


def test_negative_expression_comes_from_an_image_without_that_category_and_empties_the_target(data_root):
    base = training_set(data_root)
    refer = base.refer
    negatives = ExpressionAugmentation(base, negative_prob=1.0)
    pool = {tuple(ids[0].tolist()): r for i, r in enumerate(base.ref_ids) for ids in base.input_ids[i]}
    np.random.seed(0)
    for i, ref_id in enumerate(base.ref_ids):
        image, target, input_ids, _ = negatives[i]
        image_id = refer.Refs[ref_id]["image_id"]
        present = {ann["category_id"] for ann in refer.imgToAnns[image_id]}
        donor = pool.get(tuple(input_ids[0].tolist()))
        if donor is None or donor == ref_id:  # no valid donor found: the sample is left as it was
            assert target.any()
            continue
        assert not target.any()
        assert refer.Refs[donor]["image_id"] != image_id and refer.Refs[donor]["category_id"] not in present


def test_negative_expression_prefers_the_generated_counterfactuals(data_root):
    base = training_set(data_root)
    table = {str(s["sent_id"]): "the purple unicorn" for ref in base.refer.loadRefs(base.ref_ids) for s in ref["sentences"]}
    (data_root / "refcoco" / "counterfactuals(unc).json").write_text(json.dumps(table))
    negatives = ExpressionAugmentation(base, negative_prob=1.0)
    expected, _ = tokenize_expressions(load_tokenizer("minilm"), ["the purple unicorn"])
    _, target, input_ids, _ = negatives[0]
    assert torch.equal(input_ids, expected) and not target.any()


def test_word_masking_masks_whole_words_and_never_special_tokens():
    tokenizer = load_tokenizer("minilm")
    ids, _ = tokenize_expressions(tokenizer, ["the unbelievably tall giraffe"])

    class Tiny:  # the wrapper only needs the tokenizer name and a refer index here
        tokenizer_name = "minilm"
        max_tokens = 20
        ref_ids = []
        refer = argparse.Namespace(imgToAnns={}, Refs={}, DATA_DIR="", splitBy="unc")

    everything = ExpressionAugmentation(Tiny(), word_mask_prob=1.0).mask_words(ids)
    tokens = tokenizer.convert_ids_to_tokens(everything[0].tolist())
    assert tokens[0] == "[CLS]" and "[SEP]" in tokens and "[PAD]" in tokens
    assert all(t == "[MASK]" for t in tokens[1:tokens.index("[SEP]")])
    np.random.seed(3)
    some = ExpressionAugmentation(Tiny(), word_mask_prob=0.5).mask_words(ids)[0].tolist()
    pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    for k, piece in enumerate(pieces):  # a word piece is masked exactly when its word's first piece is
        if piece.startswith("##"):
            assert (some[k] == tokenizer.mask_token_id) == (some[k - 1] == tokenizer.mask_token_id)


def test_mirrored_samples_flip_image_and_target_and_swap_left_and_right(data_root):
    base = training_set(data_root)
    mirrored = ExpressionAugmentation(base, hflip_prob=1.0)
    tokenizer = load_tokenizer("minilm")
    for i in range(len(base)):
        np.random.seed(i)
        image, target, input_ids, mask = base[i]
        np.random.seed(i)
        got_image, got_target, got_ids, got_mask = mirrored[i]
        assert torch.equal(got_image, image.flip(-1)) and torch.equal(got_target, target.flip(-1))
        assert torch.equal(got_mask, mask)
    # Whole word pieces swap, so "leftmost" becomes "rightmost"; other words stay.
    ids, _ = tokenize_expressions(tokenizer, ["the leftmost dog, right of the cat on the left"])
    _, _, swapped = mirrored.mirror(torch.zeros(3, 2, 2), torch.zeros(2, 2), ids)
    assert tokenizer.decode(swapped[0], skip_special_tokens=True) == "the rightmost dog, left of the cat on the right"
    assert torch.equal(mirrored.mirror(torch.zeros(3, 2, 2), torch.zeros(2, 2), swapped)[2], ids)


def test_a_mirrored_negative_is_the_mirrored_counterfactual(data_root):
    base = training_set(data_root)
    table = {str(s["sent_id"]): "the unicorn on the left" for ref in base.refer.loadRefs(base.ref_ids)
             for s in ref["sentences"]}
    (data_root / "refcoco" / "counterfactuals(unc).json").write_text(json.dumps(table))
    both = ExpressionAugmentation(base, negative_prob=1.0, hflip_prob=1.0)
    expected, _ = tokenize_expressions(load_tokenizer("minilm"), ["the unicorn on the right"])
    np.random.seed(0)
    image, target, input_ids, _ = both[0]
    np.random.seed(0)
    assert torch.equal(image, base[0][0].flip(-1))
    assert torch.equal(input_ids, expected) and not target.any()


def run(cmd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_probe_tool_gives_the_same_numbers_in_one_and_two_processes(data_root, tmp_path):
    from lib.checkpoint_io import save_checkpoint
    from lib.referring_model import build_model

    args = argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm", pretrained_swin_weights="")
    torch.manual_seed(0)
    model = build_model(args)
    checkpoint = tmp_path / "random.pth"
    save_checkpoint(checkpoint, model=model.model, bert_model=model.bert_model)
    flags = ["--device", "cpu", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
             "--refer_data_root", str(data_root), "--img_size", "64", "--workers", "0", "--split", "val",
             "--resume", str(checkpoint), "--eval-batch-size", "3"]
    run([sys.executable, "tools/probes.py", *flags, "--probe-out", str(tmp_path / "one"),
         "--save-predictions", str(tmp_path / "pred")])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "tools/probes.py", *flags, "--probe-out", str(tmp_path / "two")])
    one = json.loads((tmp_path / "one" / "probes.json").read_text())
    two = json.loads((tmp_path / "two" / "probes.json").read_text())
    assert one["results"] == two["results"] and one["indicators"] == two["indicators"]
    assert set(one["results"]) == {"clean", "swap", "clean, swap objects", "category", "empty", "shuffle",
                                   "drop-category"}
    assert (tmp_path / "one" / "probes.png").stat().st_size > 0 and "reading gap" in (tmp_path / "one" / "probes.md").read_text()
    shuffled = [json.loads(line) for line in (tmp_path / "pred" / "shuffle" / "predictions.jsonl").read_text().splitlines()]
    clean = dataset(data_root)
    assert [r["sentence"] for r in shuffled] == [shuffle_words(s, 0, ref_id, j) for ref_id, sentences
                                                 in zip(clean.ref_ids, clean.sentences) for j, s in enumerate(sentences)]


@pytest.fixture(scope="module")
def generalized_root(generated_set):
    return generated_set(generalized=True, dataset="gsynref", num_images=12, img_size=64, seed=2)


def generalized_set(root, split, eval_mode=True):
    args = argparse.Namespace(refer_data_root=str(root), dataset="gsynref", splitBy="unc", bert_tokenizer="minilm")
    return ReferDataset(args, image_transforms=get_transform(64), split=split, eval_mode=eval_mode)


def test_category_probes_on_generalized_sets_use_every_referred_category(generalized_root):
    clean = generalized_set(generalized_root, "train")
    refer = clean.refer
    names = {c["id"]: c["name"] for c in refer.data["categories"]}
    probed = rewrite(clean, "category")
    expected = [r for r, no_target in zip(clean.ref_ids, clean.no_target) if not no_target]
    assert probed.ref_ids == expected and not any(probed.no_target)  # no-target refs have no category
    for i, ref_id in enumerate(probed.ref_ids):
        wanted = sorted({names[c] for c in refer.Refs[ref_id]["category_id"]})
        assert sorted(set(probed.sentences[i][0].split(" and "))) == wanted
    dropped = rewrite(clean, "drop-category")
    assert dropped.ref_ids == clean.ref_ids and dropped.no_target == clean.no_target


def test_negative_expressions_work_on_generalized_sets(generalized_root, tmp_path):
    root = tmp_path / "gdata"
    shutil.copytree(generalized_root, root)  # the generated set is shared: change a copy
    os.remove(root / "gsynref" / "counterfactuals(unc).json")  # the absent-category rule
    negatives = ExpressionAugmentation(generalized_set(root, "train", eval_mode=False), negative_prob=1.0)
    np.random.seed(0)
    targets = [negatives[i][1] for i in range(len(negatives))]
    assert any(not t.any() for t in targets)


def test_the_no_target_head_is_optimised(generalized_root):
    from lib.referring_model import build_model
    from train import build_param_groups

    args = argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm", pretrained_swin_weights="")
    plain = build_model(args)
    with_head = build_model(argparse.Namespace(**vars(args), no_target_head=True))
    in_groups = {id(p) for group in build_param_groups(with_head) for p in group["params"]}
    head = list(with_head.model.no_target_head.parameters())
    assert head and all(id(p) in in_groups for p in head)
    assert len(build_param_groups(plain)) == len(build_param_groups(with_head)) - 1  # released: 4 groups


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_clean_on_the_swapped_objects_is_cut_from_the_clean_records(data_root):
    """run_probes reuses the clean records (its own or the caller's) for "clean, swap objects"; the
    numbers equal an evaluation of exactly the swapped objects' expressions."""
    import importlib.util

    import engine
    import metrics
    from data.evaluation import build_eval_loader
    from lib.referring_model import build_model

    spec = importlib.util.spec_from_file_location("probes_tool", os.path.join(REPO, "tools", "probes.py"))
    probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probes)
    torch.manual_seed(0)
    model = build_model(argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm", pretrained_swin_weights=""))
    model.eval()
    args = argparse.Namespace(probe_seed=0, save_predictions="", eval_batch_size=1, eval_protocol="resized",
                              workers=0, no_target_pixels=1)
    val = dataset(data_root, "train")  # eval mode; the one split of the fixture with an object alone in its image
    device = torch.device("cpu")
    results = probes.run_probes(model, val, ["swap"], device, args)  # clean is added: the gap needs it
    swapped_objects = set(rewrite(val, "swap").ref_ids)
    assert 0 < len(swapped_objects) < len(val.ref_ids)
    keep = [i for i, ref_id in enumerate(val.ref_ids) if ref_id in swapped_objects]
    only_those = copy.copy(val)
    for field in ("ref_ids", "sentences", "input_ids", "attention_masks", "no_target"):
        setattr(only_those, field, [getattr(val, field)[i] for i in keep])
    expected = metrics.summarize(engine.evaluate(model, build_eval_loader(only_those, 1), device, print_freq=10**9))
    assert results["clean, swap objects"] == expected
    clean_records = engine.evaluate(model, build_eval_loader(val, 1), device, print_freq=10**9)
    assert probes.run_probes(model, val, ["clean", "swap"], device, args, clean_records=clean_records) == results
