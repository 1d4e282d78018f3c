"""Training options against the keyword shortcut (off by default: the released recipe has neither).

`ExpressionAugmentation(train_set, negative_prob, word_mask_prob, hflip_prob)` wraps a training
ReferDataset:

- negative expressions (`--negative-prob p`): with probability p the sample's expression is
  replaced by one that refers to nothing in the image, and the target becomes empty. On generated
  data the replacement is an exact counterfactual of one of the object's expressions (same noun,
  one attribute or relation changed so that no object matches; `counterfactuals(<splitBy>).json`);
  elsewhere (RefCOCO-style data) it is an expression of a training object in another image whose
  category does not occur in this image. A model can then no longer score by finding the noun:
  it must check the rest of the expression. With the no-target head, such samples also train it.
- word masking (`--word-mask-prob p`): each word of the expression (all of its word pieces) is
  replaced by the tokenizer's [MASK] token with probability p, as in the masked-text training of
  MaskRIS / Mask Grounding, so that no single word can carry the prediction.
- mirrored samples (`--hflip-prob p`): with probability p the image and target are flipped left to
  right and the words "left" and "right" swapped in the expression (whole word pieces, so "leftmost"
  becomes "rightmost"), which keeps what the expression refers to. LAVT does not flip, because a
  plain flip would contradict such words.

Random draws use NumPy's global generator, which the training loop seeds per (seed, epoch, rank)
and DataLoader workers seed per worker, so resumed runs replay exactly.
"""
import json
import os

import numpy as np
import torch

from bert import load_tokenizer
from bert.tokenize import tokenize_expressions
from refer import category_ids


class ExpressionAugmentation(torch.utils.data.Dataset):
    """A training ReferDataset with negative expressions and/or word masking (see the module docstring)."""

    def __init__(self, dataset, negative_prob=0.0, word_mask_prob=0.0, hflip_prob=0.0, max_tries=20):
        self.dataset = dataset
        self.negative_prob = negative_prob
        self.word_mask_prob = word_mask_prob
        self.hflip_prob = hflip_prob
        self.max_tries = max_tries
        tokenizer = load_tokenizer(dataset.tokenizer_name)
        self.left_id, self.right_id = tokenizer.convert_tokens_to_ids(["left", "right"])
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids = set(tokenizer.all_special_ids)
        self.continuation = np.array([token.startswith("##") for token in tokenizer.convert_ids_to_tokens(
            list(range(len(tokenizer))))])
        self.counterfactuals = self._tokenized_counterfactuals(tokenizer) if negative_prob > 0 else None
        refer = dataset.refer
        self.image_categories = {image_id: {ann["category_id"] for ann in anns}
                                 for image_id, anns in refer.imgToAnns.items()}
        self.image_of = [refer.Refs[ref_id]["image_id"] for ref_id in dataset.ref_ids]

    def _tokenized_counterfactuals(self, tokenizer):
        """Per object: token ids and masks (n, N_l) of its expressions' counterfactuals, or None."""
        refer = self.dataset.refer
        path = os.path.join(refer.DATA_DIR, f"counterfactuals({refer.splitBy}).json")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            by_sentence = json.load(handle)
        tokenized = []
        for ref_id in self.dataset.ref_ids:
            found = [by_sentence[str(s["sent_id"])] for s in refer.Refs[ref_id]["sentences"]
                     if str(s["sent_id"]) in by_sentence]
            tokenized.append(tokenize_expressions(tokenizer, found, self.dataset.max_tokens) if found else None)
        return tokenized

    def __len__(self):
        return len(self.dataset)

    def negative_expression(self, index):
        """(input_ids, attention_mask) of shape (1, N_l) that refer to nothing in object `index`'s image, or None."""
        if self.counterfactuals is not None:
            found = self.counterfactuals[index]
            if found is None:
                return None
            row = np.random.randint(len(found[0]))
            return found[0][row:row + 1], found[1][row:row + 1]
        present = self.image_categories.get(self.image_of[index], set())
        refs = self.dataset.refer.Refs
        for _ in range(self.max_tries):
            other = np.random.randint(len(self.dataset))
            ref = refs[self.dataset.ref_ids[other]]
            if self.image_of[other] != self.image_of[index] and present.isdisjoint(category_ids(ref)):
                choice = np.random.randint(len(self.dataset.input_ids[other]))
                return self.dataset.input_ids[other][choice], self.dataset.attention_masks[other][choice]
        return None

    def mask_words(self, input_ids):
        """A copy of `input_ids` (1, N_l) with each word's pieces replaced by [MASK] with probability p."""
        ids = input_ids.clone()
        word_starts = [i for i, token in enumerate(ids[0].tolist())
                       if token not in self.special_ids and not self.continuation[token]]
        for start in word_starts:
            if np.random.random() < self.word_mask_prob:
                end = start + 1
                while end < ids.shape[1] and self.continuation[int(ids[0, end])]:
                    end += 1
                ids[0, start:end] = self.mask_token_id
        return ids

    def mirror(self, image, target, input_ids):
        """The sample flipped left to right, "left" and "right" swapped in `input_ids` (1, N_l)."""
        ids = input_ids.clone()
        ids[input_ids == self.left_id] = self.right_id
        ids[input_ids == self.right_id] = self.left_id
        return image.flip(-1), target.flip(-1), ids

    def __getitem__(self, index):
        image, target, input_ids, attention_mask = self.dataset[index]
        if self.negative_prob > 0 and np.random.random() < self.negative_prob:
            negative = self.negative_expression(index)
            if negative is not None:
                input_ids, attention_mask = negative
                target = torch.zeros_like(target)
        if self.word_mask_prob > 0:
            input_ids = self.mask_words(input_ids)
        # Last, so that a negative is mirrored with its image: a counterfactual that changed "left"
        # into "right" must still match nothing.
        if self.hflip_prob > 0 and np.random.random() < self.hflip_prob:
            image, target, input_ids = self.mirror(image, target, input_ids)
        return image, target, input_ids, attention_mask
