"""COCO-Refs: referring expressions generated from COCO 2017 instance annotations, in the REFER layout.

    python -m data.coco_refs --coco /data/coco --root refer/data --dataset cocorefs

reads `<coco>/annotations/instances_{train,val}2017.json` and writes

    <root>/<dataset>/refs(<splitBy>).p                 REFER refs (grefs(<splitBy>).json with --generalized)
    <root>/<dataset>/instances.json                    the images used and their referred annotations
    <root>/<dataset>/counterfactuals(<splitBy>).json   {str(sent_id): a sentence that matches nothing}
    <root>/<dataset>/coco_refs_forms(<splitBy>).jsonl  sidecar: every sentence's semantic form
    <root>/images/<dataset>/{train2017,val2017}        links to the COCO image folders (no copying)

Every expression is derived from the annotations alone (category, location among objects of the
same category, order, size, a relation to a one-instance landmark by box centres; with
--generalized also "both cats" / "all three dogs" and no-target expressions) and kept only if
`semantics.denotation` finds it refers to exactly its target(s), with clear margins. Crowd
annotations and objects under `min_area` of their image are never targets, but count as
distractors. Splits: train (train2017), val and test (val2017, disjoint images); test images are
testB when the category alone is ambiguous for their targets, else testA (`--split test` reads
both). Both annotation files are streamed, so memory stays bounded (docs/coco_refs.md).

Modules: `stream` (streaming JSON reader, incremental writers), `semantics`, `lexicon`, `build`,
`fixture` (a small COCO-format folder with JPEGs), `examples` (pictures), `__main__`.
"""
from .build import DEFAULT_MIN_AREA, build
from .fixture import write_coco_fixture
from .semantics import denotation, true_forms

__all__ = ["build", "denotation", "true_forms", "write_coco_fixture", "DEFAULT_MIN_AREA"]
