"""Expressions to token ids as the released pipeline builds them: used by the data pipeline, the
Predictor and the ONNX export alike."""
import torch


def tokenize_expressions(tokenizer, sentences, max_tokens=20, lengths=None):
    """Token ids and attention masks (n, max_tokens) int64, as the released pipeline builds them.

    [CLS]/[SEP] are added, the FIRST `max_tokens` ids kept (a long sentence loses its [SEP]),
    ids padded with 0, and the mask is 1 on kept ids. One batched tokenizer call. A list passed as
    `lengths` receives each sentence's full token count (for `expression_problems`).
    """
    encoded = tokenizer(list(sentences), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    if lengths is not None:
        lengths.extend(len(token_ids) for token_ids in encoded)
    ids = torch.zeros(len(encoded), max_tokens, dtype=torch.int64)
    masks = torch.zeros(len(encoded), max_tokens, dtype=torch.int64)
    for row, token_ids in enumerate(encoded):
        kept = token_ids[:max_tokens]
        ids[row, : len(kept)] = torch.tensor(kept, dtype=torch.int64)
        masks[row, : len(kept)] = 1
    return ids, masks


def expression_problems(sentences, lengths, max_tokens=20):
    """(index, what) for each empty expression and each one cut to `max_tokens` tokens."""
    problems = []
    for index, (sentence, length) in enumerate(zip(sentences, lengths)):
        if not sentence.strip():
            problems.append((index, "is empty: it is encoded as [CLS][SEP], so the model sees no words"))
        elif length > max_tokens:
            problems.append((index, f"has {length} tokens with [CLS]/[SEP] and is cut to the first {max_tokens} "
                                    "(as released): the words after that are not seen"))
    return problems
