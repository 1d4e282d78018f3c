"""How far apart does the text encoder keep the words that tell one object from another?

    python bench/word_contrast.py                 # the packaged MiniLM, frozen as the quickstart uses it
    python bench/word_contrast.py --text-encoder bert-base-uncased

LAVT's fusion reads the text encoder's last-layer word features. For each pair of expressions that
differ in one word piece ("the leftmost circle" / "the rightmost circle"), this prints the cosine
similarity of the two differing word pieces at the encoder's input (the word embeddings) and at its
output (the features the fusion reads). A frozen encoder whose output keeps two words almost
parallel leaves the fusion a small difference to learn from; fine-tuning it, as LAVT does, can move
them apart. The pairs cover the SynRef expression types (data/synthetic); `--pair A B` adds one.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import add_threads_argument, apply_threads, machine_line  # noqa: E402

# (expression type, expression, the same with one word changed)
PAIRS = (
    ("attribute", "the red circle", "the blue circle"),
    ("attribute", "the red circle", "the green circle"),
    ("attribute", "the small red circle", "the big red circle"),
    ("attribute", "the circle", "the star"),
    ("location", "the leftmost circle", "the rightmost circle"),
    ("location", "the circle on the left", "the circle on the right"),
    ("location", "the circle at the top", "the circle at the bottom"),
    ("ordinal", "the second circle from the left", "the third circle from the left"),
    ("relation", "the square left of the red circle", "the square right of the red circle"),
    ("relation", "the square above the red circle", "the square below the red circle"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-encoder", default="minilm", dest="text_encoder",
                        help="a name or directory for bert.load_text_encoder (default: the packaged MiniLM)")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="another pair of expressions differing in one word piece")
    add_threads_argument(parser)
    return parser.parse_args(argv)


@torch.no_grad()
def word_contrast(encoder, tokenizer, first, second):
    """(differing word pieces, input cosine, output cosine) of two expressions differing in one word piece."""
    ids = [tokenizer(text, return_tensors="pt")["input_ids"] for text in (first, second)]
    if ids[0].shape != ids[1].shape:
        raise ValueError(f"'{first}' and '{second}' tokenize to different lengths; give a pair that differs "
                         "in one word piece")
    differing = (ids[0] != ids[1])[0].nonzero().flatten().tolist()
    if len(differing) != 1:
        raise ValueError(f"'{first}' and '{second}' differ in {len(differing)} word pieces, not one")
    position = differing[0]
    embedded = [encoder.embeddings.word_embeddings(i)[0, position] for i in ids]
    features = [encoder(input_ids=i, attention_mask=torch.ones_like(i)).last_hidden_state[0, position] for i in ids]
    words = "/".join(tokenizer.convert_ids_to_tokens([int(i[0, position]) for i in ids]))
    return (words, torch.cosine_similarity(*embedded, dim=0).item(),
            torch.cosine_similarity(*features, dim=0).item())


def main(argv=None):
    from bert.text_encoder import load_text_encoder, load_tokenizer

    args = parse_args(argv)
    apply_threads(args.threads)
    encoder = load_text_encoder(args.text_encoder).eval()
    tokenizer = load_tokenizer(args.text_encoder)
    print(f"text encoder {args.text_encoder}; {machine_line(args.threads)}\n")
    print("| type | expressions | words | input cosine | output cosine |\n|---|---|---|---|---|")
    for kind, first, second in (*PAIRS, *(("given", a, b) for a, b in args.pair)):
        words, before, after = word_contrast(encoder, tokenizer, first, second)
        print(f"| {kind} | {first} / {second} | {words} | {before:.3f} | {after:.3f} |")


if __name__ == "__main__":
    main()
