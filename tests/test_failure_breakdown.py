"""bench/failure_breakdown.py: missed / hedged / found shares, outline quality, per type and target size."""
import json
import pickle

import pytest

from bench.failure_breakdown import breakdown, landings, main, summarize


def row(ref_id, i, inter, union, predicted, sentence_index=0, iou=None):
    iou = (inter / union if union else 0.0) if iou is None else iou
    return {"ref_id": ref_id, "sentence_index": sentence_index, "I": inter, "U": union, "pred_pixels": predicted,
            "IoU": iou}


def test_shares_outline_quality_and_hedged_precision():
    rows = [row(0, 0, 0, 50, 20),     # missed: IoU 0 (target 30 px)
            row(1, 0, 30, 100, 90),   # hedged: IoU 0.3, target 40 px, recall 0.75, precision 1/3
            row(2, 0, 80, 100, 90),   # found: IoU 0.8
            row(3, 0, 90, 100, 95)]   # found: IoU 0.9
    s = summarize(rows)
    assert (s["missed"], s["hedged"], s["found"]) == (0.25, 0.25, 0.5)
    assert s["found_iou"] == pytest.approx(0.85) and s["mean_iou"] == pytest.approx(0.5)
    assert s["hedged_recall"] == pytest.approx(0.75) and s["hedged_precision"] == pytest.approx(1 / 3)
    assert summarize([row(0, 0, 0, 0, 0)])["mean_iou"] == 0.0  # U = 0 scores 0, as the evaluation does
    # A target the no-target head rejected: the evaluation's IoU 0 counts, not the mask's I / U.
    assert summarize([row(0, 0, 90, 100, 95, iou=0.0)])["missed"] == 1.0


def test_rows_are_split_by_expression_type_and_target_size():
    rows = [row(0, 0, 40, 50, 45), row(0, 0, 10, 200, 150, sentence_index=1), row(1, 0, 0, 300, 0)]
    types = {(0, 0): "attribute", (0, 1): "ordinal", (1, 0): "ordinal"}
    by_type, by_area = breakdown(rows, types)
    assert by_type["attribute"]["samples"] == 1 and by_type["ordinal"]["samples"] == 2
    assert by_type["all"]["samples"] == 3 and by_type["ordinal"]["missed"] == 1.0
    # target pixels: 50 - 45 + 40 = 45, 200 - 150 + 10 = 60, 300
    assert [s["samples"] for s in by_area.values()] == [1, 1, 0, 1]


def test_script_reads_a_generated_set(generated_set, tmp_path, capsys):
    root = generated_set(dataset="synref", num_images=6, img_size=64, seed=3)
    refs = pickle.loads((root / "synref" / "refs(unc).p").read_bytes())
    rows = [row(ref["ref_id"], 0, 10, 20, 15) for ref in refs if ref["split"] == "val"]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main([str(tmp_path), "--refer_data_root", str(root)])
    out = capsys.readouterr().out
    assert f"| all | {len(rows)} | 50.0 |" in out
    assert "| relation / ordinal |" not in out  # no mask saved: nothing to trace


def test_script_traces_saved_masks_of_a_generated_set(generated_set, tmp_path, capsys):
    from PIL import Image

    from data.synthetic import read_sidecar
    from refer.refer import REFER, object_mask

    root = generated_set(dataset="synref", num_images=12, img_size=64, seed=3)
    refer = REFER(str(root), "synref", "unc")
    form_of = {e["sent_id"]: e["form"] for e in read_sidecar(str(root), "synref")["expressions"]}
    rows, kinds = [], set()
    for ref in refer.Refs.values():
        target = object_mask(refer.getAnnMask(refer.refToAnn[ref["ref_id"]])["mask"])
        Image.fromarray(target * 255).save(tmp_path / f"ref{ref['ref_id']}.png")  # every mask on its target
        for i, sent_id in enumerate(ref["sent_ids"]):
            pixels = int(target.sum())
            rows.append({**row(ref["ref_id"], 0, pixels, pixels, pixels, sentence_index=i), "mask": f"ref{ref['ref_id']}.png"})
            form = form_of[sent_id]
            if form["type"] == "relation":
                kinds.add(f"relation: {form['relation']}")
            elif form["type"] == "ordinal":
                kinds.add(f"ordinal: from {form['from']}")
    assert kinds  # the set has relation or ordinal expressions to trace
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main([str(tmp_path), "--refer_data_root", str(root)])
    out = capsys.readouterr().out
    for kind in kinds:
        assert any(line.startswith(f"| {kind} |") and line.split(" | ")[2] == "100.0" for line in out.splitlines()), kind


def test_each_mask_is_compared_with_every_object_of_its_image(generated_set, tmp_path):
    import numpy as np
    from PIL import Image

    from bench.failure_breakdown import compare_with_every_object
    from refer.refer import REFER, object_mask

    root = generated_set(dataset="synref", num_images=6, img_size=64, seed=3)
    refer = REFER(str(root), "synref", "unc")
    ref = next(r for r in refer.Refs.values() if len(refer.imgToAnns[r["image_id"]]) >= 2)
    target = refer.refToAnn[ref["ref_id"]]
    other = next(a for a in refer.imgToAnns[ref["image_id"]] if a["id"] != target["id"])

    def saved(name, ann):  # as test.py saves a mask: 0/255 at the evaluation size (32 px here, not the image's 64)
        mask = np.zeros((32, 32), np.uint8) if ann is None else object_mask(refer.getAnnMask(ann)["mask"])
        Image.fromarray(mask * 255).resize((32, 32), Image.NEAREST).save(tmp_path / name)
        return {"ref_id": ref["ref_id"], "sentence_index": 0, "mask": name}

    rows = [saved("right.png", target), saved("look_alike.png", other), saved("empty.png", None),
            {"ref_id": ref["ref_id"], "sentence_index": 0}]  # no mask saved: left out
    compare_with_every_object(rows, refer, str(tmp_path))
    assert (rows[0]["wrong_object"], rows[0]["best_object_iou"], rows[0]["best_object"]) == (False, 1.0, target["id"])
    # a clean mask of the wrong object
    assert (rows[1]["wrong_object"], rows[1]["best_object_iou"], rows[1]["best_object"]) == (True, 1.0, other["id"])
    # a tie at 0 is not a wrong object, and overlaps no object
    assert (rows[2]["wrong_object"], rows[2]["best_object_iou"], rows[2]["best_object"]) == (False, 0.0, None)
    assert "wrong_object" not in rows[3]
    for r, iou in zip(rows, (1.0, 0.0, 0.0, 0.0)):
        r.update(I=iou, U=1, pred_pixels=1, IoU=iou)
    s = summarize(rows)
    assert s["wrong_object"] == pytest.approx(1 / 3) and s["best_object_iou"] == pytest.approx(2 / 3)
    assert s["samples"] == 4 and s["mean_iou"] == pytest.approx(0.25)


def test_relation_and_ordinal_masks_are_traced_to_the_object_they_land_on():
    objects = {1: {"shape": "circle", "colour": "red", "size": "small"},
               2: {"shape": "circle", "colour": "blue", "size": "big"},
               3: {"shape": "star", "colour": "pink", "size": "small"},
               4: {"shape": "heart", "colour": "red", "size": "big"}}
    nearest = {"type": "relation", "relation": "nearest", "target": {"shape": "circle"},
               "landmark": {"shape": "star", "colour": "pink"}}
    # "the circle closest to the blue circle": the landmark also fits the target's description.
    like_landmark = {"type": "relation", "relation": "nearest", "target": {"shape": "circle"},
                     "landmark": {"shape": "circle", "colour": "blue"}}
    second = {"type": "ordinal", "rank": 2, "from": "left", "target": {"colour": "red"}}
    forms = {(0, 0): nearest, (0, 1): nearest, (0, 2): nearest, (0, 3): nearest, (0, 4): nearest,
             (1, 0): second, (1, 1): second, (2, 0): {"type": "attribute", "target": {"shape": "star"}},
             (3, 0): like_landmark, (3, 1): like_landmark, (3, 2): like_landmark}

    def compared(ref_id, i, best, iou, wrong):
        return {"ref_id": ref_id, "sentence_index": i, "best_object": best, "best_object_iou": iou, "wrong_object": wrong}

    rows = [compared(0, 0, 1, 0.8, False),   # the target
            compared(0, 1, 2, 0.7, True),    # the other circle
            compared(0, 2, 3, 0.9, True),    # the pink star it was to be compared with
            compared(0, 3, 4, 0.6, True),    # an object the expression does not describe
            compared(0, 4, 2, 0.05, True),   # overlaps nothing enough to count
            compared(1, 0, 4, 0.7, True),    # the other red object
            compared(1, 1, 1, 0.3, False),   # a hedged mask, not over another object more than its target
            {"ref_id": 1, "sentence_index": 1},  # no mask saved: left out
            compared(2, 0, 3, 0.9, False),   # attribute expressions are not traced
            compared(3, 0, 2, 0.9, True),    # the blue circle is the landmark before it is another circle
            compared(3, 1, 1, 0.1, True),    # IoU 0.1 is enough to land on an object
            {**compared(3, 2, 1, 0.9, False), "no_target_pred": True}]  # rejected by the head: scored 0
    shares = landings(rows, forms, objects)
    assert list(shares) == ["ordinal: from left", "relation: nearest"]
    assert shares["relation: nearest"] == {"samples": 8, "target": 1 / 8, "another of its description": 2 / 8,
                                           "the landmark": 2 / 8, "another object": 1 / 8, "none": 2 / 8}
    assert shares["ordinal: from left"] == {"samples": 2, "target": 0.5, "another of its description": 0.5,
                                            "the landmark": 0.0, "another object": 0.0, "none": 0.0}
