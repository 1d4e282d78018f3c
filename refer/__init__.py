"""The REFER index of referring-expression datasets (RefCOCO, RefCOCO+, RefCOCOg, generated sets) and GREFER (gRefCOCO)."""
from .grefer import GREFER, category_ids, grefs_path
from .refer import DATA_SETUP_HINT, KNOWN_SPLITBY, REFER, object_mask
from .safe_pickle import UnsafePickleError, load_refs_pickle

__all__ = ["REFER", "GREFER", "grefs_path", "category_ids", "KNOWN_SPLITBY", "DATA_SETUP_HINT", "object_mask", "UnsafePickleError",
           "load_refs_pickle"]
