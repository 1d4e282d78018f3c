"""ReferDataset: (image, mask, BERT token ids, attention mask) per referred object of a REFER split."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image
from torch.utils import data

from bert import load_tokenizer
from bert.tokenize import expression_problems, tokenize_expressions  # noqa: F401 (re-exported)
from errors import UserInputError
from lib.images import decode_rgb_image, eight_bit, rgb_image  # noqa: F401 (re-exported)
from refer import DATA_SETUP_HINT, GREFER, REFER, grefs_path, object_mask

__all__ = ["ReferDataset", "load_rgb_image", "rgb_image", "eight_bit", "tokenize_expressions", "expression_problems",
           "check_image_size"]

def load_rgb_image(path: str, what: str = "") -> Image.Image:
    """Open an image file as 8-bit RGB whatever its PIL mode (see `rgb_image`), with errors that name
    the file (`what` says where the path came from, e.g. a ref id)."""
    suffix = f" ({what})" if what else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image file not found: '{path}'{suffix}. {DATA_SETUP_HINT}")
    return decode_rgb_image(path, f"Image '{path}'{suffix}")


def check_image_size(image: Image.Image, info: dict, path: str, what: str) -> None:
    """The mask is drawn at the annotated size and both are resized to img_size, so a mismatch would
    silently pair the image with a stretched or wrong mask."""
    if image.size != (info["width"], info["height"]):
        raise UserInputError(
            f"Image '{path}' ({what}) is {image.width}x{image.height} pixels (width x height), but its entry "
            f"{info.get('id')!r} in instances.json says {info['width']}x{info['height']}: the annotations do not "
            "belong to this file. Fix the entry's width/height or replace the image.")


class ReferDataset(data.Dataset):
    """One item per referred object of `split`, as in the released LAVT data pipeline.

    `args` needs `refer_data_root`, `dataset`, `splitBy` and `bert_tokenizer` (a name or
    directory for `bert.load_tokenizer`, e.g. 'bert-base-uncased' or 'minilm').

    `__getitem__(i)` returns `(image, target, input_ids, attention_mask)`:
    - image: the RGB image (any PIL mode is converted), target: the object mask as a PIL 'L'
      image with values 0/1; both passed through `image_transforms(image, target)` when given;
    - training (`eval_mode=False`): one of the object's sentences, drawn with `np.random.choice`
      (seed with `np.random.seed`; torch's DataLoader seeds NumPy in each worker), ids and mask
      of shape (1, 20);
    - evaluation (`eval_mode=True`): all sentences, shape (1, 20, n_sentences).
    `target_transforms` is accepted for signature compatibility and unused, as in the original.

    Text: each sentence's `raw` string is tokenized with [CLS]/[SEP]; the FIRST 20 ids are kept,
    so an expression longer than 18 word pieces loses its [SEP] (as in the original); ids are
    padded with 0 and the attention mask is 1 on kept ids. An empty or whitespace-only
    expression becomes [CLS][SEP] (the model sees no words) and is reported once, at
    construction, in a warning naming its ref id and sentence id.

    Generalized sets (gRefCOCO layout, see refer/grefer.py): used when `--dataset grefcoco` or when
    `<refer_data_root>/<dataset>/grefs(<splitBy>).json` (or `.p`) exists. Items have the same
    format; the target is the union of the referred objects (all zeros for a no-target expression)
    and `no_target[i]` says whether object `i` refers to nothing (always False for REFER sets).

    Masks: the target is 1 where `REFER.getMask`'s summed mask equals 1, as in the released code,
    so pixels where two polygons of the object overlap are background; `mask_union=True` makes
    them object (the corrected target; it changes training and evaluation targets).
    An object whose mask is empty (area 0) is kept with an all-zero target (downstream
    IoU is 0 when the union is empty) and reported once per ref id in a warning.

    Errors: a split with no refs -> ValueError naming dataset/splitBy/split; a ref without
    sentences -> ValueError naming it; a missing image -> FileNotFoundError naming the path and
    the ref id; an undecodable image -> UserInputError naming the file.

    For evaluation and analysis code: `ref_ids`, `sentences` (raw strings per ref), `input_ids`
    and `attention_masks` (per ref, a list of (1, 20) int64 tensors), `refer`, `no_target`
    (per ref, bool), `original_target(i)` (full-resolution uint8 mask) and `image_info(i)`.
    """

    max_tokens = 20

    def __init__(self, args, image_transforms=None, target_transforms=None, split: str = "train",
                 eval_mode: bool = False, mask_union: bool = False):
        for name in ("refer_data_root", "dataset", "splitBy", "bert_tokenizer"):
            if not hasattr(args, name):
                raise AttributeError(f"ReferDataset needs args.{name} (see the training script's --{name} option).")
        self.image_transforms = image_transforms
        self.target_transforms = target_transforms
        self.split = split
        self.eval_mode = eval_mode
        self.mask_union = mask_union
        self.generalized = args.dataset == "grefcoco" or grefs_path(args.refer_data_root, args.dataset,
                                                                     args.splitBy) is not None
        index_class = GREFER if self.generalized else REFER
        self.refer = index_class(args.refer_data_root, args.dataset, args.splitBy,
                                 coco2017_dir=getattr(args, "coco2017_dir", None))
        self.ref_ids = self.refer.getRefIds(split=split)
        if not self.ref_ids:
            raise UserInputError(
                f"Split '{split}' of dataset '{args.dataset}' (splitBy '{args.splitBy}') has no refs in "
                f"'{self.refer.DATA_DIR}'. Check the split name and the refs file."
            )
        refs = self.refer.loadRefs(self.ref_ids)
        for ref in refs:
            if not ref["sentences"]:
                raise UserInputError(f"Ref {ref['ref_id']} of {args.dataset} ({args.splitBy}) has no sentences.")
        self.sentences = [[sent["raw"] for sent in ref["sentences"]] for ref in refs]
        self.no_target = [self.generalized and self.refer.is_no_target(ref) for ref in refs]
        self._warn_empty_sentences(refs)
        self.tokenizer_name = args.bert_tokenizer
        self.input_ids, self.attention_masks = self._tokenize(load_tokenizer(args.bert_tokenizer))
        self._warned_empty_masks: set = set()

    def _warn_empty_sentences(self, refs) -> None:
        empty = [(ref["ref_id"], sent["sent_id"]) for ref in refs for sent in ref["sentences"] if not sent["raw"].strip()]
        if empty:
            listed = ", ".join(f"ref {r} sentence {s}" for r, s in empty[:10])
            more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
            warnings.warn(
                f"{len(empty)} empty expression(s) in split '{self.split}' ({listed}{more}); they are "
                "encoded as [CLS][SEP], so the model sees no words for them.",
                stacklevel=3,
            )

    def _warn_truncated(self, lengths) -> None:
        places = [(ref_id, sent["sent_id"]) for ref_id, ref in zip(self.ref_ids, self.refer.loadRefs(self.ref_ids))
                  for sent in ref["sentences"]]
        cut = [places[i] for i, length in enumerate(lengths) if length > self.max_tokens]
        if cut:
            listed = ", ".join(f"ref {r} sentence {s}" for r, s in cut[:10])
            more = f" and {len(cut) - 10} more" if len(cut) > 10 else ""
            warnings.warn(f"{len(cut)} expression(s) in split '{self.split}' are longer than {self.max_tokens} tokens "
                          f"and are cut to the first {self.max_tokens}, as released ({listed}{more}).", stacklevel=4)

    def _tokenize(self, tokenizer):
        """Tokenize every sentence in one batch call; per ref, a list of (1, max_tokens) tensors."""
        flat = [sentence for sentences in self.sentences for sentence in sentences]
        lengths = []
        ids, masks = tokenize_expressions(tokenizer, flat, self.max_tokens, lengths=lengths)
        self._warn_truncated(lengths)
        # One small tensor per sentence (not views of one big tensor), so that a worker sending
        # an item does not move the whole table into shared memory.
        input_ids, attention_masks, start = [], [], 0
        for sentences in self.sentences:
            stop = start + len(sentences)
            input_ids.append([ids[i : i + 1].clone() for i in range(start, stop)])
            attention_masks.append([masks[i : i + 1].clone() for i in range(start, stop)])
            start = stop
        return input_ids, attention_masks

    def __len__(self) -> int:
        return len(self.ref_ids)

    def image_info(self, index: int) -> dict:
        return self.refer.Imgs[self.refer.Refs[self.ref_ids[index]]["image_id"]]

    def original_target(self, index: int) -> np.ndarray:
        """The full-resolution object mask, uint8 (H, W), 1 on the object."""
        ref_id = self.ref_ids[index]
        mask = object_mask(self.refer.getMask(self.refer.Refs[ref_id])["mask"], union=self.mask_union)
        if not mask.any() and not self.no_target[index] and ref_id not in self._warned_empty_masks:
            self._warned_empty_masks.add(ref_id)
            warnings.warn(f"Ref {ref_id} has an empty mask (area 0); its target is all zeros.", stacklevel=2)
        return mask

    def __getitem__(self, index: int):
        ref_id = self.ref_ids[index]
        try:
            path = self.refer.image_path(self.image_info(index)["file_name"])
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (ref {ref_id}) {DATA_SETUP_HINT}") from None
        image = load_rgb_image(path, what=f"ref {ref_id}")
        check_image_size(image, self.image_info(index), path, f"ref {ref_id}")
        target = Image.fromarray(self.original_target(index))
        if self.image_transforms is not None:
            image, target = self.image_transforms(image, target)

        if self.eval_mode:
            input_ids = torch.stack(self.input_ids[index], dim=-1)
            attention_mask = torch.stack(self.attention_masks[index], dim=-1)
        else:
            choice = np.random.choice(len(self.input_ids[index]))
            input_ids = self.input_ids[index][choice]
            attention_mask = self.attention_masks[index][choice]
        return image, target, input_ids, attention_mask
