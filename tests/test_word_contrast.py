"""bench/word_contrast.py: cosine of the one differing word piece before and after the text encoder."""
import pytest
import torch

from bench.word_contrast import PAIRS, main, word_contrast
from bert.text_encoder import load_text_encoder, load_tokenizer


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm").eval(), load_tokenizer("minilm")


def test_cosines_are_those_of_the_differing_word_piece(minilm):
    encoder, tokenizer = minilm
    words, before, after = word_contrast(encoder, tokenizer, "the red circle", "the blue circle")
    assert words == "red/blue"
    red, blue = (tokenizer.convert_tokens_to_ids(w) for w in ("red", "blue"))
    table = encoder.embeddings.word_embeddings.weight
    assert before == pytest.approx(torch.cosine_similarity(table[red], table[blue], dim=0).item(), abs=1e-6)
    assert -1 <= after < 0.99  # different words, different features


def test_pairs_that_do_not_differ_in_exactly_one_word_piece_are_refused(minilm):
    encoder, tokenizer = minilm
    with pytest.raises(ValueError, match="different lengths"):
        word_contrast(encoder, tokenizer, "the circle", "the red circle")
    with pytest.raises(ValueError, match="differ in 0 word pieces"):
        word_contrast(encoder, tokenizer, "the circle", "the circle")
    with pytest.raises(ValueError, match="differ in 2 word pieces"):
        word_contrast(encoder, tokenizer, "the red circle", "a blue circle")


def test_frozen_minilm_keeps_directions_closer_than_colours(minilm):
    # The measurement docs/synthetic.md reports: the input embeddings of left/right are as far apart as
    # those of red/blue, the last layer makes the directions nearly parallel and keeps the colours apart.
    encoder, tokenizer = minilm
    _, colour_in, colour_out = word_contrast(encoder, tokenizer, "the red circle", "the blue circle")
    _, side_in, side_out = word_contrast(encoder, tokenizer, "the circle on the left", "the circle on the right")
    assert abs(side_in - colour_in) < 0.2
    assert side_out > colour_out + 0.3


def test_script_prints_one_row_per_pair(capsys):
    main(["--threads", "1", "--pair", "the big star", "the small star"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "/" in line]
    assert len(rows) == len(PAIRS) + 1
    assert rows[-1].startswith("| given | the big star / the small star | big/small |")
