"""Evaluation batches: every sentence of an object is one sample, batched across objects.

`build_eval_loader(dataset, ...)` wraps an eval-mode `ReferDataset`: each rank reads a disjoint
shard of the objects (`utils.ShardSampler`), objects are grouped so that a batch holds at most
`max_sentences` sentences, and `collate_sentences` flattens each object's sentences into one
batch of samples. In eval mode every sample is computed independently, so the grouping changes
speed, never results.

`evaluate_dataset(model, dataset, device, ...)` is the one evaluation pipeline (split -> loader ->
`engine.evaluate` records -> `metrics.summarize_for` summary) that train.py's validation, test.py,
the probes, the quickstart and the benches run.
"""
import numpy as np
import torch

import engine
import metrics
import utils


class SentenceSamples(torch.utils.data.Dataset):
    """Per object: its image, target and the sentences to evaluate (all, or one chosen per object).

    `original_size=True` gives the target at the image's own size (`--eval-protocol original`).
    """

    def __init__(self, dataset, sentence_choices=None, original_size=False):
        self.dataset = dataset
        self.sentence_choices = sentence_choices
        self.original_size = original_size

    def __len__(self):
        return len(self.dataset)

    def sentence_indices(self, index):
        if self.sentence_choices is not None:
            return [self.sentence_choices[index]]
        return list(range(len(self.dataset.sentences[index])))

    def __getitem__(self, index):
        image, target, input_ids, attention_mask = self.dataset[index]
        if self.original_size:
            target = torch.from_numpy(self.dataset.original_target(index))
        chosen = self.sentence_indices(index)
        input_ids = input_ids.reshape(input_ids.shape[-2], -1).t()[chosen]  # (n_chosen, N_l)
        attention_mask = attention_mask.reshape(attention_mask.shape[-2], -1).t()[chosen]
        no_target = bool(self.dataset.no_target[index]) if hasattr(self.dataset, "no_target") else False
        return {"index": index, "sentence_indices": chosen, "image": image, "target": target,
                "input_ids": input_ids, "attention_mask": attention_mask, "no_target": no_target}


class SentenceBudgetBatchSampler(torch.utils.data.Sampler):
    """Consecutive objects of `indices` grouped so that a batch has at most `max_sentences` sentences
    (an object with more sentences than that is a batch of its own)."""

    def __init__(self, indices, sentence_counts, max_sentences):
        self.batches, batch, size = [], [], 0
        for index in indices:
            count = sentence_counts[index]
            if batch and size + count > max_sentences:
                self.batches.append(batch)
                batch, size = [], 0
            batch.append(index)
            size += count
        if batch:
            self.batches.append(batch)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def collate_sentences(items):
    """Flatten objects into samples: images repeated per sentence; targets (at the original size they
    differ between objects) and no-target flags kept as lists."""
    images, targets, input_ids, attention_mask, samples, no_target = [], [], [], [], [], []
    for item in items:
        count = len(item["sentence_indices"])
        images.append(item["image"].unsqueeze(0).expand(count, *item["image"].shape))
        targets += [item["target"]] * count
        input_ids.append(item["input_ids"])
        attention_mask.append(item["attention_mask"])
        samples += [(item["index"], j) for j in item["sentence_indices"]]
        no_target += [item["no_target"]] * count
    return {"images": torch.cat(images), "targets": targets, "input_ids": torch.cat(input_ids),
            "attention_mask": torch.cat(attention_mask), "samples": samples, "no_target": no_target}


def one_sentence_per_object(dataset, seed):
    """A seeded choice of one sentence per object (the released per-epoch validation)."""
    rng = np.random.default_rng(seed)
    return [int(rng.integers(len(sentences))) for sentences in dataset.sentences]


def build_eval_loader(dataset, max_sentences=16, one_sentence_seed=None, original_size=False, workers=0,
                      pin_memory=False):
    """DataLoader of sentence batches over this rank's shard of `dataset` (an eval-mode ReferDataset)."""
    choices = one_sentence_per_object(dataset, one_sentence_seed) if one_sentence_seed is not None else None
    samples = SentenceSamples(dataset, choices, original_size)
    counts = [len(samples.sentence_indices(i)) for i in range(len(samples))]
    shard = list(utils.ShardSampler(len(samples)))
    return torch.utils.data.DataLoader(
        samples, batch_sampler=SentenceBudgetBatchSampler(shard, counts, max_sentences),
        num_workers=workers, pin_memory=pin_memory, collate_fn=collate_sentences)


def evaluate_dataset(model, dataset, device, *, max_sentences=16, one_sentence_seed=None, original_size=False,
                     workers=0, pin_memory=False, amp_dtype=None, prediction_dir="", print_freq=100,
                     progress_lines=None, log_file=None, no_target_pixels=1):
    """(summary, records) of `model` on the eval-mode `dataset`, over all ranks.

    The loader options are `build_eval_loader`'s; `prediction_dir`: where each rank writes its masks
    and the main rank predictions.jsonl (nothing when empty); `progress_lines`: log about that many
    progress lines per pass instead of one every `print_freq` batches. The summary is the one the
    dataset is reported with (`metrics.summarize_for`: generalized or classic).
    """
    writer = metrics.PredictionWriter(prediction_dir, dataset) if prediction_dir else None
    loader = build_eval_loader(dataset, max_sentences, one_sentence_seed=one_sentence_seed,
                               original_size=original_size, workers=workers, pin_memory=pin_memory)
    if progress_lines is not None:
        print_freq = max(len(loader) // progress_lines, 1)
    records = engine.evaluate(model, loader, device, amp_dtype=amp_dtype, prediction_writer=writer,
                              print_freq=print_freq, log_file=log_file, no_target_pixels=no_target_pixels)
    return metrics.summarize_for(dataset, records), records
