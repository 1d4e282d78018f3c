"""Read REFER `refs(<splitBy>).p` files without letting them run code.

A pickle can name any importable callable and have it called while loading (`os.system`,
`builtins.open`, ...). The REFER files only hold lists, dicts, strings and numbers, which the
unpickler builds with its own opcodes, never through `find_class`; so `find_class` here admits
only `set` and `frozenset` (protocols 0-2 rebuild those by calling the type) and refuses every
other global before anything it refers to is imported or called.

The released RefCOCO / RefCOCO+ / RefCOCOg files are Python 2 pickles (protocol 2). Python 2
`str` objects in them are decoded as UTF-8 and, if that fails, as Latin-1.
"""
from __future__ import annotations

import io
import os
import pickle

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "load_refs_pickle"]

# (module, name) pairs a refs file may reference. Python 2 pickles spell builtins `__builtin__`.
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("builtins", "__builtin__")
    for name in ("set", "frozenset")
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list; nothing it carries was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` only returns builtin container and scalar types."""

    def __init__(self, file, source: str = "<bytes>", encoding: str = "utf-8"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"Refusing to load '{self.source}': it references the global '{module}.{name}', which a "
                "REFER refs file never contains (only lists, dicts, strings and numbers). The file may "
                "be malicious or not a refs file; nothing in it was executed. Re-download the REFER "
                "annotations (see README.md, section 'Data setup')."
            )
        import builtins

        return getattr(builtins, name)


def _unpickle(data: bytes, source: str, encoding: str):
    return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()


def load_refs_pickle(path: str | os.PathLike):
    """Load a refs pickle through `RestrictedUnpickler`, with errors that name the file."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        try:
            return _unpickle(data, path, "utf-8")
        except UnicodeDecodeError:
            # Python 2 byte strings that are not UTF-8: Latin-1 maps every byte and never fails.
            return _unpickle(data, path, "latin1")
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, MemoryError) as err:
        raise pickle.UnpicklingError(
            f"Cannot read refs file '{path}': it is truncated or corrupt ({type(err).__name__}: {err}). "
            "Re-download the REFER annotations (see README.md, section 'Data setup')."
        ) from err
