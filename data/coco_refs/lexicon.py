"""Words for COCO categories and the templates that turn a semantic form into an expression.

Only category, position, order, size and count words: COCO has no colour or attribute labels, so
an expression naming one could not be checked and is never written.
"""
from __future__ import annotations

from data.synthetic.language import normalize_sentence, pluralize

# name -> other nouns for it (most common first after the COCO name), and irregular plurals.
SYNONYMS = {
    "person": ["person", "human"], "bicycle": ["bicycle", "bike"], "car": ["car", "automobile"],
    "motorcycle": ["motorcycle", "motorbike"], "airplane": ["airplane", "plane", "aircraft"],
    "bus": ["bus"], "train": ["train"], "truck": ["truck", "lorry"], "boat": ["boat", "ship"],
    "traffic light": ["traffic light", "traffic signal"], "fire hydrant": ["fire hydrant", "hydrant"],
    "stop sign": ["stop sign"], "parking meter": ["parking meter"], "bench": ["bench"], "bird": ["bird"],
    "cat": ["cat", "kitty"], "dog": ["dog", "puppy"], "horse": ["horse"], "sheep": ["sheep", "lamb"],
    "cow": ["cow"], "elephant": ["elephant"], "bear": ["bear"], "zebra": ["zebra"], "giraffe": ["giraffe"],
    "backpack": ["backpack", "rucksack"], "umbrella": ["umbrella"], "handbag": ["handbag", "purse"],
    "tie": ["tie", "necktie"], "suitcase": ["suitcase", "luggage bag"], "frisbee": ["frisbee"],
    "skis": ["pair of skis"], "snowboard": ["snowboard"], "sports ball": ["ball", "sports ball"],
    "kite": ["kite"], "baseball bat": ["baseball bat", "bat"], "baseball glove": ["baseball glove", "mitt"],
    "skateboard": ["skateboard"], "surfboard": ["surfboard", "surf board"], "tennis racket": ["tennis racket", "racket"],
    "bottle": ["bottle"], "wine glass": ["wine glass"], "cup": ["cup", "mug"], "fork": ["fork"], "knife": ["knife"],
    "spoon": ["spoon"], "bowl": ["bowl"], "banana": ["banana"], "apple": ["apple"], "sandwich": ["sandwich"],
    "orange": ["orange"], "broccoli": ["broccoli"], "carrot": ["carrot"], "hot dog": ["hot dog"],
    "pizza": ["pizza"], "donut": ["donut", "doughnut"], "cake": ["cake"], "chair": ["chair", "seat"],
    "couch": ["couch", "sofa"], "potted plant": ["potted plant", "house plant"], "bed": ["bed"],
    "dining table": ["dining table", "table"], "toilet": ["toilet"], "tv": ["tv", "television"],
    "laptop": ["laptop", "notebook computer"], "mouse": ["computer mouse", "mouse"], "remote": ["remote", "remote control"],
    "keyboard": ["keyboard"], "cell phone": ["cell phone", "phone", "mobile phone"], "microwave": ["microwave"],
    "oven": ["oven"], "toaster": ["toaster"], "sink": ["sink"], "refrigerator": ["refrigerator", "fridge"],
    "book": ["book"], "clock": ["clock"], "vase": ["vase"], "scissors": ["pair of scissors"],
    "teddy bear": ["teddy bear", "teddy"], "hair drier": ["hair drier", "hair dryer"], "toothbrush": ["toothbrush"],
}
PLURALS = {"person": "people", "human": "humans", "sheep": "sheep", "lamb": "lambs", "knife": "knives",
           "pair of skis": "pairs of skis", "pair of scissors": "pairs of scissors", "broccoli": "broccoli",
           "computer mouse": "computer mice", "mouse": "mice", "kitty": "kitties", "puppy": "puppies",
           "luggage bag": "luggage bags"}
# A category word: the nouns listed above plus every noun used in the plural.

ORDINALS = {2: ["second", "2nd"], 3: ["third", "3rd"], 4: ["fourth", "4th"], 5: ["fifth", "5th"], 6: ["sixth", "6th"]}
NUMBERS = {2: ["two", "2"], 3: ["three", "3"], 4: ["four", "4"], 5: ["five", "5"], 6: ["six", "6"]}

TEMPLATES = {
    "category": ["the {n}", "{n}", "the {n} in the picture", "the only {n}", "the {n} in the image"],
    ("location", "left"): ["the {n} on the left", "the leftmost {n}", "{n} on the far left",
                           "the {n} furthest to the left", "left {n}"],
    ("location", "right"): ["the {n} on the right", "the rightmost {n}", "{n} on the far right",
                            "the {n} furthest to the right", "right {n}"],
    ("location", "top"): ["the {n} at the top", "the topmost {n}", "the highest {n} in the picture", "top {n}"],
    ("location", "bottom"): ["the {n} at the bottom", "the lowest {n} in the picture", "bottom {n}",
                             "the bottommost {n}"],
    "order": ["the {k} {n} from the {side}", "{k} {n} from {side}", "the {k} {n} counting from the {side}",
              "{k} {n} from the {side}"],
    ("size", "largest"): ["the largest {n}", "the biggest {n}", "biggest {n}", "the {n} that looks largest"],
    ("size", "smallest"): ["the smallest {n}", "smallest {n}", "the tiniest {n}", "the {n} that looks smallest"],
    ("relation", "left"): ["the {n} left of the {m}", "the {n} to the left of the {m}", "{n} on the left of the {m}"],
    ("relation", "right"): ["the {n} right of the {m}", "the {n} to the right of the {m}",
                            "{n} on the right of the {m}"],
    ("relation", "above"): ["the {n} above the {m}", "the {n} higher up than the {m}", "{n} above the {m}"],
    ("relation", "below"): ["the {n} below the {m}", "the {n} lower than the {m}", "{n} beneath the {m}"],
    ("multi", 2): ["both {ns}", "the two {ns}", "both of the {ns}", "the 2 {ns}"],
    ("multi", "more"): ["all {k} {ns}", "the {k} {ns}", "all of the {k} {ns}"],
}


def nouns(name: str) -> list:
    """The nouns for a category name; names outside COCO's 80 are used as they are."""
    return SYNONYMS.get(name) or [" ".join(name.replace("_", " ").split()).lower()]


def plural(noun: str) -> str:
    return PLURALS.get(noun) or (noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou"
                                 else pluralize(noun))


def category_synonyms(name: str) -> list:
    """Every other word the expressions use for a category (read by the drop-category probe)."""
    words = nouns(name)
    found = [*(words[1:] if words[0] == name else words), *(plural(w) for w in words)]
    return list(dict.fromkeys(w for w in found if w != name))


def _choice(draw: float, options: list):
    """One option from a uniform draw: the same draw picks the same position in any list, so a
    counterfactual replaying its original's draws keeps its template and word positions."""
    return options[min(int(draw * len(options)), len(options) - 1)]


def realize(form: dict, names: dict, rng) -> str:
    """An English expression for a form; `names` maps category ids to names.

    Exactly four uniform draws are made whatever the form, so that replaying `rng`'s state for
    a form changed in one slot phrases it the same way."""
    template_draw, noun_draw, extra_draw, landmark_draw = (float(rng.random()) for _ in range(4))
    kind = form["type"]
    noun = _choice(noun_draw, nouns(names[form["cat"]]))
    if kind == "category":
        return _choice(template_draw, TEMPLATES["category"]).format(n=noun)
    if kind == "location":
        return _choice(template_draw, TEMPLATES[("location", form["where"])]).format(n=noun)
    if kind == "order":
        return _choice(template_draw, TEMPLATES["order"]).format(
            n=noun, k=_choice(extra_draw, ORDINALS[form["rank"]]), side=form["from"])
    if kind == "size":
        return _choice(template_draw, TEMPLATES[("size", form["which"])]).format(n=noun)
    if kind == "relation":
        landmark = _choice(landmark_draw, nouns(names[form["lm"]]))
        return _choice(template_draw, TEMPLATES[("relation", form["rel"])]).format(n=noun, m=landmark)
    if kind == "multi":
        count = form["count"]
        templates = TEMPLATES[("multi", 2 if count == 2 else "more")]
        return _choice(template_draw, templates).format(ns=plural(noun), k=_choice(extra_draw, NUMBERS[count]))
    raise ValueError(f"Unknown form {form!r}")


def sentence(raw: str, sent_id: int) -> dict:
    sent, tokens = normalize_sentence(raw)
    return {"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": sent}
