"""Reading and writing large JSON / pickle files one element at a time.

The COCO 2017 train annotation file is ~450 MB on one line; `json.load` holds it all as Python
objects (several GB). `stream_top_level` walks the top-level object instead and hands each item
of each top-level array to a callback, so only one annotation is alive at a time.
"""
from __future__ import annotations

import codecs
import json
import os
import pickle

from errors import UserInputError

_WHITESPACE = " \t\r\n"
_DECODER = json.JSONDecoder()


class _Short(Exception):
    """The buffer ends inside the value being decoded: read more."""


class _Reader:
    def __init__(self, handle, chunk: int, progress=None):
        self.handle, self.chunk, self.progress = handle, chunk, progress
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False

    def fill(self) -> None:
        if self.eof:
            raise _Short
        data = self.handle.read(self.chunk)
        if self.progress is not None:
            self.progress.update(len(data))
        self.eof = not data
        self.buf = self.buf[self.pos:] + self.decoder.decode(data, final=self.eof)
        self.pos = 0

    def peek(self) -> str:
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self.fill()

    def take(self, expected: str) -> str:
        found = self.peek()
        if found not in expected or not found:
            raise json.JSONDecodeError(f"expected one of {expected!r}", self.buf, self.pos)
        self.pos += 1
        return found

    def value(self):
        self.peek()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
                # A number cut by the buffer end decodes as a shorter number: only trust a value
                # that is followed by something, or that ends the file.
                if end == len(self.buf) and not self.eof:
                    raise _Short
                self.pos = end
                return obj
            except (json.JSONDecodeError, _Short):
                if self.eof:
                    raise
                self.fill()


def stream_top_level(path: str, on_item: dict, chunk: int = 1 << 22, progress=None) -> dict:
    """Walk the JSON object in `path`: each item of a top-level array `key` goes to `on_item[key](item)`.

    Arrays without a callback are read and dropped item by item; other top-level values are
    returned in a dict. `progress` (a tqdm bar) is advanced by the bytes read.
    """
    others = {}
    with open(path, "rb") as handle:
        reader = _Reader(handle, chunk, progress)
        try:
            reader.take("{")
            if reader.peek() == "}":
                return others
            while True:
                key = reader.value()
                reader.take(":")
                if reader.peek() == "[":
                    reader.take("[")
                    callback = on_item.get(key)
                    if reader.peek() != "]":
                        while True:
                            item = reader.value()
                            if callback is not None:
                                callback(item)
                            if reader.take(",]") == "]":
                                break
                    else:
                        reader.take("]")
                else:
                    others[key] = reader.value()
                if reader.take(",}") == "}":
                    return others
        except (json.JSONDecodeError, _Short, UnicodeDecodeError) as err:
            raise UserInputError(f"'{path}' is not a JSON object as COCO annotation files are ({err}).") from err


class JsonArrayWriter:
    """Writes `[item, item, ...]` as items come, so a long list never sits in memory."""

    def __init__(self, handle):
        self.handle, self.count = handle, 0
        handle.write("[")

    def add(self, item) -> None:
        self.handle.write(("," if self.count else "") + json.dumps(item, separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        self.handle.write("]")


class JsonMapWriter:
    """Writes `{"key": value, ...}` as pairs come."""

    def __init__(self, path: str):
        self.handle = open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed by close()
        self.handle.write("{")
        self.count = 0

    def add(self, key: str, value) -> None:
        self.handle.write(("," if self.count else "") + json.dumps(str(key)) + ":"
                          + json.dumps(value, separators=(",", ":")))
        self.count += 1

    def close(self) -> None:
        self.handle.write("}")
        self.handle.close()


class PickleListWriter:
    """A protocol-2 pickle of a list, appended in batches: what `pickle.dump(list)` would load as.

    Each item is pickled on its own and its opcodes are spliced between MARK and APPENDS; its
    memo indices restart at 0, which is safe because an item only refers to its own memo entries.
    """

    def __init__(self, path: str, batch: int = 1000):
        self.handle = open(path, "wb")  # noqa: SIM115 -- closed by close()
        self.handle.write(b"\x80\x02" + pickle.EMPTY_LIST)
        self.batch, self.pending, self.count = batch, [], 0

    def add(self, item) -> None:
        self.pending.append(pickle.dumps(item, protocol=2)[2:-1])  # without PROTO and STOP
        self.count += 1
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.handle.write(pickle.MARK + b"".join(self.pending) + pickle.APPENDS)
            self.pending = []

    def close(self) -> None:
        self.flush()
        self.handle.write(pickle.STOP)
        self.handle.close()


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
