"""SynRef: a procedurally generated referring-segmentation dataset in the on-disk REFER layout.

    python -m data.synthetic --root refer/data --dataset synref --num-images 2000 --img-size 128 --seed 0

writes, exactly as RefCOCO is laid out (so `REFER` -> `ReferDataset` -> model -> metrics run unchanged):

    <root>/<dataset>/refs(<splitBy>).p         pickled list of refs (builtin types only, protocol 2)
    <root>/<dataset>/instances.json            COCO-style images / annotations (polygons) / categories
    <root>/images/<dataset>/<dataset>_<12-digit id>.png
    <root>/<dataset>/counterfactuals(<splitBy>).json   {str(sent_id): counterfactual sentence}
    <root>/<dataset>/synthetic_scenes.json     sidecar (not read by REFER): every scene's objects and
                                               every sentence's semantic form, for checking and analysis

With `--generalized` the refs are `grefs(<splitBy>).json` in the gRefCOCO layout instead: expressions
that refer to one object, to several, or to none (`generate_generalized`).

Scenes hold 2-6 flat-coloured shapes (8 shapes x 8 colours x 2 sizes) on a textured background.
Expressions are generated from semantic forms (attribute / location / relation / ordinal, see
`evaluate`) and kept only if the form picks out exactly one object with clear geometric margins.
Splits: train, val, testA (attribute expressions), testB (location / relation / ordinal) and testC
(targets are colour-shape pairs never referred to in train). See docs/synthetic.md.

Masks are exact: every shape is a polygon rasterised by pycocotools (the decoder `REFER.getMask`
uses), and the picture is painted from those masks, so an unoccluded object's annotation is its
drawing polygon; an occluded object's annotation is traced along the pixel edges of its visible
mask, and the generator re-decodes every annotation and rejects a scene unless it equals the
painted pixels.

Modules: `scene` (shapes, colours, painting), `polygons` (exact mask -> polygon tracing),
`sampling` (random scenes), `semantics` (what a form denotes), `forms` (choosing forms),
`language` (forms -> sentences), `counterfactual` (one change, nothing matches), `writer` (the
REFER-layout set), `generalized` (the gRefCOCO-layout set), `examples` (pictures), `__main__`
(command line).
"""
from .counterfactual import counterfactual_form
from .examples import outline_target, write_examples
from .generalized import absent_shape_form, generate_generalized
from .language import COLOUR_WORDS, GENERIC_NOUNS, SHAPE_WORDS, SIZE_WORDS, normalize_sentence, realize
from .polygons import mask_to_polygons
from .sampling import sample_scene
from .scene import COLOURS, SHAPES, SIZES, render_scene, shape_polygon
from .semantics import EXPRESSION_TYPES, denotation, evaluate, referent
from .writer import DEFAULT_MIX, SPLITS, expression_types, generate, read_sidecar

__all__ = [
    "SHAPES", "COLOURS", "SIZES", "EXPRESSION_TYPES", "SPLITS", "DEFAULT_MIX", "SHAPE_WORDS", "COLOUR_WORDS",
    "SIZE_WORDS", "GENERIC_NOUNS", "generate", "sample_scene", "render_scene", "shape_polygon",
    "mask_to_polygons", "evaluate", "referent", "denotation", "realize", "normalize_sentence", "outline_target",
    "write_examples", "counterfactual_form", "absent_shape_form", "generate_generalized", "expression_types", "read_sidecar",
]
