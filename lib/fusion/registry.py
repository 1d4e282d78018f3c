"""The registry through which fusion modules reach the model builder (`--fusion NAME`).

`register_fusion("name")` files a class under a name; `get_fusion(name)` finds it;
`fusion_with_options(name, options)` binds a fusion's own keyword arguments (`--fusion-kwargs`),
checked against its constructor. Every module of the lib/fusion package is imported by the
package itself, so a module added there registers its fusion without any other file changing.
"""
import functools
import inspect

from errors import UserInputError

# Name -> fusion class. `pwam` is the released LAVT module and the default everywhere.
FUSION_LAYERS = {}
# The arguments every stage passes; the rest of a constructor's keywords are the fusion's own options.
STAGE_ARGUMENTS = ("dim", "text_dim", "num_heads", "dropout")


def register_fusion(name):
    """Class decorator: `@register_fusion("mine")` makes `build_lavt(fusion_layer="mine")` build it."""
    def register(fusion_layer):
        taken = FUSION_LAYERS.get(name)
        if taken is not None and taken is not fusion_layer:
            raise ValueError(f"register_fusion: the name '{name}' is already taken by {taken.__module__}."
                             f"{taken.__qualname__}; choose another name")
        FUSION_LAYERS[name] = fusion_layer
        return fusion_layer
    return register


def get_fusion(fusion_layer):
    """A registered name (e.g. 'pwam') or a callable following the fusion contract -> the callable."""
    if callable(fusion_layer):
        return fusion_layer
    if fusion_layer not in FUSION_LAYERS:
        raise UserInputError(f"fusion '{fusion_layer}' is unknown; registered fusion layers: "
                             f"{', '.join(sorted(FUSION_LAYERS))} (add a module to the lib/fusion package)")
    return FUSION_LAYERS[fusion_layer]


def fusion_with_options(fusion_layer, options):
    """`fusion_layer` (a name or callable) with its own keyword arguments `options` bound; each must be a
    keyword of its constructor other than the ones every stage passes."""
    fusion_layer = get_fusion(fusion_layer)
    if not options:
        return fusion_layer
    name = getattr(fusion_layer, "__name__", repr(fusion_layer))
    parameters = inspect.signature(fusion_layer).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    own = [p for p in parameters if p not in STAGE_ARGUMENTS and parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    for key in options:
        if key in STAGE_ARGUMENTS or not (takes_any or key in own):
            raise UserInputError(f"--fusion-kwargs {key}=...: {name} takes no option '{key}'; its own options are "
                                 f"{', '.join(own) or 'none'}.")
    return functools.partial(fusion_layer, **options)
