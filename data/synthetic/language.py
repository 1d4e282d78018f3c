"""Turning semantic forms into English: the lexicon (synonyms, generic nouns), phrase templates,
`realize` and REFER's `sent` / `tokens` normalisation."""
from __future__ import annotations

import numpy as np

from .scene import COLOURS, SHAPES
from .semantics import CORNERS

COLOUR_WORDS = {c: [c] for c in COLOURS} | {"cyan": ["cyan", "turquoise"], "purple": ["purple", "violet"]}
SHAPE_WORDS = {s: [s] for s in SHAPES} | {"circle": ["circle", "disk"], "diamond": ["diamond", "rhombus"],
                                           "cross": ["cross", "plus sign"]}
SIZE_WORDS = {"small": ["small", "little"], "big": ["big", "large"]}
GENERIC_NOUNS = ["shape", "object", "thing", "figure"]


def pick(rng, options, p_first: float | None = None):
    """A random option; with `p_first`, the first (most common) word gets that probability."""
    if p_first is not None and len(options) > 1:
        return options[0] if rng.random() < p_first else options[1 + int(rng.integers(len(options) - 1))]
    return options[int(rng.integers(len(options)))]


class Lexicon:
    """Word choices for one sentence: a synonym, once drawn, is reused (no 'turquoise ... cyan')."""

    def __init__(self, rng):
        self.rng, self.words = rng, {}

    def word(self, table: dict, value: str) -> str:
        if value not in self.words:
            self.words[value] = pick(self.rng, table[value], p_first=0.75)
        return self.words[value]

    def adjectives(self, desc: dict) -> list:
        """Size then colour words of a desc."""
        return [self.word(table, desc[key]) for key, table in (("size", SIZE_WORDS), ("colour", COLOUR_WORDS))
                if key in desc]

    def noun_phrase(self, desc: dict, allow_one: bool = True, plural: bool = False) -> str:
        """Adjectives + noun, no determiner: 'small purple star', 'red one', 'shape' ('red ones')."""
        adjectives = self.adjectives(desc)
        if "shape" in desc:
            noun = self.word(SHAPE_WORDS, desc["shape"])
        else:
            noun = pick(self.rng, GENERIC_NOUNS + (["one"] if adjectives and allow_one else []))
        return " ".join([*adjectives, pluralize(noun) if plural else noun])


class AlignedLexicon(Lexicon):
    """Word choices that follow another sentence: replayed from the rng state that phrased the form
    `original`, a form whose target desc `changed` differs from it in a slot draws what the original
    drew, so the two sentences differ (mostly) in the changed words: a changed value takes the
    synonym rank of the value it replaces, an added one its most common word without a draw."""

    def __init__(self, rng, original: dict, changed: dict):
        super().__init__(rng)
        self.original, self.changed = original, changed
        self.source = {changed[k]: original.get(k) for k in changed if original.get(k) != changed[k]}
        self.ranks = {}

    def word(self, table: dict, value: str) -> str:
        if value not in self.words:
            source = self.source.get(value, value)
            if source is None:
                self.words[value] = table[value][0]
            else:
                if source not in self.ranks:
                    self.ranks[source] = table[source].index(pick(self.rng, table[source], p_first=0.75))
                self.words[value] = table[value][min(self.ranks[source], len(table[value]) - 1)]
        return self.words[value]

    def noun_phrase(self, desc: dict, allow_one: bool = True, plural: bool = False) -> str:
        if desc is not self.changed or "shape" not in desc or "shape" in self.original:
            return super().noun_phrase(desc, allow_one, plural)
        adjectives = self.adjectives(desc)
        had_adjectives = "size" in self.original or "colour" in self.original
        pick(self.rng, GENERIC_NOUNS + (["one"] if had_adjectives and allow_one else []))  # the original's noun draw
        noun = self.word(SHAPE_WORDS, desc["shape"])
        return " ".join([*adjectives, pluralize(noun) if plural else noun])


def pluralize(noun: str) -> str:
    """'cross' -> 'crosses', 'plus sign' -> 'plus signs', 'rhombus' -> 'rhombuses', 'star' -> 'stars'."""
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def article(rng, p_the: float = 0.75) -> str:
    return "the " if rng.random() < p_the else ""


def _realize_attribute(rng, lex: Lexicon, desc: dict) -> str:
    if "shape" in desc and len(desc) >= 2 and rng.random() < 0.3:  # "the star that is small and purple"
        words = lex.adjectives(desc)
        return f"{article(rng)}{lex.word(SHAPE_WORDS, desc['shape'])} that is {' and '.join(words)}"
    if "shape" in desc and "colour" in desc and rng.random() < 0.2:  # "the small red colored star"
        size = lex.word(SIZE_WORDS, desc["size"]) + " " if "size" in desc else ""
        return f"{article(rng)}{size}{lex.word(COLOUR_WORDS, desc['colour'])} colored {lex.word(SHAPE_WORDS, desc['shape'])}"
    return article(rng) + lex.noun_phrase(desc)


LOCATION_TEMPLATES = {
    "left": ["the leftmost {n}", "{np} on the left", "{np} on the far left", "{np} furthest to the left", "left {n}"],
    "right": ["the rightmost {n}", "{np} on the right", "{np} on the far right", "{np} furthest to the right", "right {n}"],
    "top": ["the topmost {n}", "{np} at the top", "the highest {n}", "top {n}", "{np} closest to the top"],
    "bottom": ["the bottom {n}", "{np} at the bottom", "the lowest {n}", "bottom {n}", "{np} closest to the bottom"],
    "center": ["{np} in the middle", "{np} in the center", "{np} closest to the center", "the most central {n}"],
}
for _corner in CORNERS:
    _upper = _corner.replace("top", "upper").replace("bottom", "lower")
    LOCATION_TEMPLATES[_corner] = [f"{{np}} in the {_corner}", f"{{np}} in the {_corner} corner",
                                   f"{_corner} {{n}}", f"{{np}} at the {_upper}"]
RELATION_TEMPLATES = {
    "left": ["{np} left of {lm}", "{np} to the left of {lm}", "{np} on the left of {lm}"],
    "right": ["{np} right of {lm}", "{np} to the right of {lm}", "{np} on the right of {lm}"],
    "above": ["{np} above {lm}", "{np} that is above {lm}", "{np} higher up than {lm}"],
    "below": ["{np} below {lm}", "{np} under {lm}", "{np} beneath {lm}", "{np} that is below {lm}"],
    "nearest": ["{np} closest to {lm}", "{np} nearest to {lm}", "{np} next to {lm}", "{np} nearest {lm}"],
}
ORDINAL_TEMPLATES = ["the {k} {n} from the {side}", "{k} {n} from the {side}", "the {k} {n} from {side}",
                     "the {k} {n} counting from the {side}"]
ORDINAL_WORDS = {2: ["second", "2nd"], 3: ["third", "3rd"], 4: ["fourth", "4th"]}
# Plural forms: "both red shapes", "the three circles", "all stars", "the squares left of the red heart".
QUANTIFIER_TEMPLATES = {2: ["both {ns}", "both of the {ns}", "the {k} {ns}"], "all": ["all {ns}", "all the {ns}", "the {ns}"]}
NUMBER_TEMPLATES = ["the {k} {ns}", "all {k} {ns}"]  # three or more
NUMBER_WORDS = {2: ["two", "2"], 3: ["three", "3"], 4: ["four", "4"], 5: ["five", "5"], 6: ["six", "6"]}
PLURAL_RELATION_WORDS = {
    "left": ["left of", "to the left of", "on the left of"], "right": ["right of", "to the right of", "on the right of"],
    "above": ["above", "that are above", "higher up than"], "below": ["below", "under", "beneath", "that are below"],
}


def _realize_singular(rng, lex: Lexicon, form: dict) -> str:
    kind = form["type"]
    n = lex.noun_phrase(form["target"])
    slots = {"n": n, "np": article(rng) + n}
    if kind == "location":
        template = pick(rng, LOCATION_TEMPLATES[form["where"]])
    elif kind == "relation":
        template = pick(rng, RELATION_TEMPLATES[form["relation"]])
        slots["lm"] = article(rng, 0.9) + lex.noun_phrase(form["landmark"])
    elif kind == "ordinal":
        template = pick(rng, ORDINAL_TEMPLATES)
        slots.update(k=pick(rng, ORDINAL_WORDS[form["rank"]], p_first=0.75), side=form["from"])
    else:
        raise ValueError(f"Unknown semantic form {form!r}.")
    return template.format(**slots)


def _raw_style(rng, text: str) -> str:
    """RefCOCO's raw strings are sometimes capitalised or end in a full stop."""
    text = " ".join(text.split())
    if rng.random() < 0.15:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.1:
        text += "."
    return text


def _realize_plural(rng, lex: Lexicon, form: dict) -> str:
    count = form["count"]
    templates = QUANTIFIER_TEMPLATES.get(count, NUMBER_TEMPLATES)
    text = pick(rng, templates).format(ns=lex.noun_phrase(form["target"], plural=True),
                                       k=pick(rng, NUMBER_WORDS[count], p_first=0.8) if count != "all" else "")
    if form["type"] == "attribute":
        return text
    if form["type"] != "relation" or form["relation"] not in PLURAL_RELATION_WORDS:
        raise ValueError(f"Unknown plural form {form!r}.")
    landmark = article(rng, 0.9) + lex.noun_phrase(form["landmark"])
    return f"{text} {pick(rng, PLURAL_RELATION_WORDS[form['relation']])} {landmark}"


def realize(form: dict, rng: np.random.Generator, like: dict | None = None) -> str:
    """A raw English expression for a semantic form (phrasing drawn from `rng`).

    With `like` (a form differing from `form` in its target desc or one other slot) and `rng` in
    the state that phrased `like`, the phrasing follows that sentence (see `AlignedLexicon`).
    """
    lex = Lexicon(rng) if like is None else AlignedLexicon(rng, like["target"], form["target"])
    if "count" in form:
        text = _realize_plural(rng, lex, form)
    elif form["type"] == "attribute":
        text = _realize_attribute(rng, lex, form["target"])
    else:
        text = _realize_singular(rng, lex, form)
    return _raw_style(rng, text)


def normalize_sentence(raw: str) -> tuple[str, list]:
    """REFER's `sent` (lower case, letters/digits/spaces) and `tokens` for a raw expression."""
    sent = " ".join("".join(ch if ch.isalnum() else " " for ch in raw.lower()).split())
    return sent, sent.split()
