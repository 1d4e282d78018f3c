"""Fusion modules of LAVT, one package: the registry (registry.py), the released PWAM and language
gate (pwam.py), and any module added here.

Importing the package imports every module in it, so a new file holding an
`@register_fusion("name")` class is reachable as `--fusion name` without editing another file.
"""
import importlib
import pkgutil

from .registry import FUSION_LAYERS, fusion_with_options, get_fusion, register_fusion


def import_fusion_modules(paths=None, package=__name__):
    """Import every module found in `paths` (default: this package's folders), registering their fusions."""
    for module in pkgutil.iter_modules(__path__ if paths is None else paths):
        importlib.import_module(f"{package}.{module.name}")


import_fusion_modules()

from .pwam import PWAM, PixelWordAttention, language_gate  # noqa: E402  (imported above; named for callers)

__all__ = ["FUSION_LAYERS", "register_fusion", "get_fusion", "fusion_with_options", "import_fusion_modules",
           "PWAM", "PixelWordAttention", "language_gate"]
