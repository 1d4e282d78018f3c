"""Text encoder resolution (offline first) and the frozen-encoder feature cache."""
import pytest
import torch
from transformers import BertConfig, BertModel

from bert import load_text_config, load_tokenizer, resolve_text_model


def test_packaged_minilm_resolves_offline_with_bert_vocabulary():
    assert load_text_config("minilm").hidden_size == 384
    tokenizer = load_tokenizer("minilm")
    # bert-base-uncased WordPiece ids: [CLS]=101, "the"=1996, [SEP]=102
    assert tokenizer("the")["input_ids"] == [101, 1996, 102]


def test_local_directory_is_used_as_is(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(tmp_path)
    assert resolve_text_model(str(tmp_path)) == str(tmp_path)
    assert load_text_config(str(tmp_path)).hidden_size == 32


def test_missing_directory_names_it_and_says_what_to_pass(tmp_path):
    missing = str(tmp_path / "no" / "such" / "bert")
    with pytest.raises(FileNotFoundError, match="minilm") as err:
        resolve_text_model(missing)
    assert missing in str(err.value)


def test_cached_text_features_match_the_eval_encoder_and_compute_each_sentence_once():
    from lib.referring_model import ReferringModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=20, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    encoder = BertModel(config, add_pooling_layer=False).requires_grad_(False)
    calls = []
    encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    model = ReferringModel(torch.nn.Identity(), encoder)
    model.cache_text_features()
    model.train()  # the separate BERT stays in eval mode: the cache never sees dropout
    ids = torch.tensor([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0], [101, 5, 6, 102, 0]])
    mask = (ids > 0).long()
    first = model.encode_text(ids, mask)
    second = model.encode_text(ids.flip(0), mask.flip(0))
    with torch.no_grad():
        expected = encoder.eval()(ids, attention_mask=mask)[0]
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected.flip(0))
    # The first call encodes the two distinct sentences once; the second is served from the cache;
    # the 3-row call is the reference computation above.
    assert calls == [2, 3]


def test_only_a_frozen_separate_encoder_can_be_cached():
    from lib.referring_model import ReferringModel

    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=8), add_pooling_layer=False)
    with pytest.raises(ValueError, match="frozen"):
        ReferringModel(torch.nn.Identity(), encoder).cache_text_features()


def test_missing_default_encoder_is_an_error_not_a_substitution(monkeypatch):
    import bert.text_encoder as text_encoder

    monkeypatch.setattr(text_encoder, "_hub_snapshot", lambda name: None)  # as on an offline machine
    text_encoder.resolve_text_model.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"bert-base-uncased.*--ck_bert.*--ck_bert minilm --bert_tokenizer minilm"):
            resolve_text_model("bert-base-uncased")
        with pytest.raises(FileNotFoundError, match="--ck_bert"):
            resolve_text_model(None)  # None means the default
    finally:
        text_encoder.resolve_text_model.cache_clear()
