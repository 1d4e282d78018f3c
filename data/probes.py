"""Language probes: rewrite every evaluation expression, keep image and target, and see what the
model still gets right. They measure how much a model reads the words.

- `clean`: the expressions as they are;
- `swap`: the expression of another referred object of the same image (objects alone in their
  image are left out of this probe, and `clean` is also reported on the same objects);
- `category`: the referred object's category name from instances.json (category-only baseline,
  Cirik et al. 2018; on gRefCOCO the names of all referred objects, no-target refs left out);
- `empty`: no words at all, [CLS][SEP] (image-only baseline);
- `shuffle`: the words of the expression in a seeded random order (Akula et al. 2020);
- `drop-category`: the expression without its category word(s): the category name's words,
  their plurals, and the category's `synonyms` when instances.json lists them;
- `counterfactual` (generated data only): one attribute or relation changed so that no object
  of the scene matches (`counterfactuals(<splitBy>).json` written by data.synthetic); scored as
  the share of samples where the model still outputs an object.

`rewrite(dataset, probe, seed)` returns a shallow copy of an eval-mode ReferDataset whose
`sentences`, `input_ids` and `attention_masks` are rewritten (objects without a rewrite are
dropped). Every random choice depends on (seed, ref id, sentence index) only, so the result is
the same in any process and for any sharding.
"""
import copy
import json
import os
import re

import numpy as np

from bert import load_tokenizer
from bert.tokenize import tokenize_expressions
from errors import UserInputError
from refer import category_ids

PROBES = ("clean", "swap", "category", "empty", "shuffle", "drop-category", "counterfactual")


def _words(sentence):
    return sentence.split()


def shuffle_words(sentence, seed, ref_id, sentence_index):
    """The words of `sentence` in a random order fixed by (seed, ref id, sentence index)."""
    words = _words(sentence)
    order = np.random.default_rng([seed, int(ref_id), sentence_index]).permutation(len(words))
    return " ".join(words[i] for i in order)


def category_words(category):
    """Lower-case words naming a category record: its name's words, plurals, and `synonyms` if any."""
    names = [category["name"], *category.get("synonyms", [])]
    words = {word for name in names for word in name.lower().split()}
    return words | {word + "s" for word in words} | {word + "es" for word in words}


def drop_category(sentence, words):
    """`sentence` without the tokens in `words` (case-insensitive, trailing punctuation ignored)."""
    return " ".join(w for w in _words(sentence) if re.sub(r"[^\w-]+$", "", w.lower()) not in words)


def _other_ref_in_image(refer, ref):
    """The next referred object of the same image (cyclically, in file order), or None."""
    refs = [r for r in refer.imgToRefs[ref["image_id"]] if r["sentences"]]
    if len(refs) < 2:
        return None
    return refs[(refs.index(ref) + 1) % len(refs)]


def _load_counterfactuals(dataset):
    refer = dataset.refer
    path = os.path.join(refer.DATA_DIR, f"counterfactuals({refer.splitBy}).json")
    if not os.path.isfile(path):
        raise UserInputError(f"The counterfactual probe needs '{path}', which the synthetic generator writes "
                             "(python -m data.synthetic ...); it exists only for generated data.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _rewritten_sentences(dataset, probe, seed):
    """Per object: its rewritten sentences (same count as the original), or None to drop the object."""
    refer = dataset.refer
    counterfactuals = _load_counterfactuals(dataset) if probe == "counterfactual" else None
    rewritten = []
    for ref_id, sentences in zip(dataset.ref_ids, dataset.sentences):
        ref = refer.Refs[ref_id]
        if probe == "clean":
            new = list(sentences)
        elif probe == "swap":
            other = _other_ref_in_image(refer, ref)
            new = None if other is None else [other["sentences"][j % len(other["sentences"])]["raw"]
                                              for j in range(len(sentences))]
        elif probe == "category":
            names = [refer.Cats[c] for c in category_ids(ref)]
            new = [" and ".join(names)] * len(sentences) if names else None  # no-target refs have none
        elif probe == "empty":
            new = [""] * len(sentences)
        elif probe == "shuffle":
            new = [shuffle_words(s, seed, ref_id, j) for j, s in enumerate(sentences)]
        elif probe == "drop-category":
            wanted = set(category_ids(ref))
            words = set().union(*(category_words(c) for c in refer.data["categories"] if c["id"] in wanted))
            new = [drop_category(s, words) for s in sentences]
        else:  # counterfactual
            found = [counterfactuals.get(str(sent["sent_id"])) for sent in ref["sentences"]]
            new = found if all(found) else None
        rewritten.append(new)
    return rewritten


def rewrite(dataset, probe, seed=0):
    """A copy of the eval-mode `dataset` with every expression rewritten by `probe`."""
    if probe not in PROBES:
        raise UserInputError(f"--probes: unknown probe {probe!r}; choose from {', '.join(PROBES)}")
    rewritten = _rewritten_sentences(dataset, probe, seed)
    keep = [i for i, sentences in enumerate(rewritten) if sentences is not None]
    probed = copy.copy(dataset)
    probed.ref_ids = [dataset.ref_ids[i] for i in keep]
    probed.sentences = [rewritten[i] for i in keep]
    probed.no_target = [dataset.no_target[i] for i in keep]
    tokenizer = load_tokenizer(dataset.tokenizer_name)
    probed.input_ids, probed.attention_masks = [], []
    for sentences in probed.sentences:
        ids, masks = tokenize_expressions(tokenizer, sentences, dataset.max_tokens)
        probed.input_ids.append([row[None].clone() for row in ids])
        probed.attention_masks.append([row[None].clone() for row in masks])
    return probed
