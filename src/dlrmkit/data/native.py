"""The compiled helpers (``_native/criteo_parse.c``) through ctypes, with numpy code as the fallback.

`library()` is None when the extension was not built (no C compiler at install time) or when
``DLRMKIT_PARSER=numpy`` asks for the numpy code; every caller then takes its numpy path, which
gives the same results.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

_LIB: dict = {}
_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int

_SIGNATURES = {
    "dlrmkit_parse_block": (_I64, [_P, _I64, _P, _P, _P, _P, _P, _P, _I64, _P]),
    "dlrmkit_add_counts": (None, [_P, _P, _I64, _I64]),
    "dlrmkit_map_new": (_P, [_I64]),
    "dlrmkit_map_free": (None, [_P]),
    "dlrmkit_map_size": (_I64, [_P]),
    "dlrmkit_map_count": (_I32, [_P, _P, _I64, _I64]),
    "dlrmkit_map_first": (_I32, [_P, _P, _I64, _I64, _P, _I64]),
    "dlrmkit_map_lookup": (None, [_P, _P, _I64, _I64, _I64, _P, _I64]),
    "dlrmkit_map_items": (None, [_P, _P, _P]),
    "dlrmkit_map_insert": (_I32, [_P, _P, _P, _I64]),
    "dlrmkit_map_capacity": (_I64, [_P]),
    "dlrmkit_map_export": (None, [_P, _P]),
    "dlrmkit_flat_lookup": (None, [_P, _I64, _P, _I64, _I64, _I64, _P, _I64]),
}


def library():
    if "lib" not in _LIB:
        lib = None
        if os.environ.get("DLRMKIT_PARSER", "native") != "numpy":
            try:
                from dlrmkit.data._native import _criteo_parse

                lib = ctypes.CDLL(_criteo_parse.__file__)
                for name, (restype, argtypes) in _SIGNATURES.items():
                    fn = getattr(lib, name)
                    fn.restype, fn.argtypes = restype, argtypes
            except (ImportError, OSError, AttributeError):
                lib = None
        _LIB["lib"] = lib
    return _LIB["lib"]


def _u32(column: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint32 values, stride in elements): a strided uint32 column (one column of a row-major
    matrix) is passed as it is; anything else is copied (categorical values are below 2^32)."""
    if column.dtype == np.uint32 and column.ndim == 1 and column.strides[0] % 4 == 0 and column.strides[0] > 0:
        return column, column.strides[0] // 4
    return np.ascontiguousarray(column, dtype=np.uint32), 1


def _i32_out(n: int, out: np.ndarray | None) -> tuple[np.ndarray, int]:
    """An int32 output column (given, possibly strided, or new) and its stride in elements."""
    if out is None:
        out = np.empty(n, dtype=np.int32)
    if n == 0:  # an empty array's stride is arbitrary (numpy may report 0)
        return out, 1
    if out.dtype != np.int32 or out.shape != (n,) or out.strides[0] % 4 or out.strides[0] <= 0:
        raise ValueError(f"output must be an int32 column of {n} values")
    return out, out.strides[0] // 4


class NativeMap:
    """A C hash map from uint32 values to int64; see the map functions in criteo_parse.c."""

    def __init__(self, lib, capacity: int = 1024):
        self.lib = lib
        self.handle = lib.dlrmkit_map_new(capacity)
        if not self.handle:
            raise MemoryError("cannot allocate a vocabulary map")

    @classmethod
    def create(cls) -> "NativeMap | None":
        lib = library()
        return None if lib is None else cls(lib)

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.dlrmkit_map_free(self.handle)
            self.handle = None

    def __len__(self) -> int:
        return int(self.lib.dlrmkit_map_size(self.handle))

    def count(self, column: np.ndarray) -> None:
        v, stride = _u32(column)
        if not self.lib.dlrmkit_map_count(self.handle, v.ctypes.data, v.size, stride):
            raise MemoryError("out of memory growing a vocabulary map")

    def first(self, column: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Each value's number in order of first appearance (into ``out`` when given)."""
        v, stride = _u32(column)
        out, out_stride = _i32_out(v.size, out)
        if not self.lib.dlrmkit_map_first(self.handle, v.ctypes.data, v.size, stride, out.ctypes.data, out_stride):
            raise MemoryError("out of memory growing a vocabulary map")
        return out

    def lookup(self, column: np.ndarray, missing: int, out: np.ndarray | None = None) -> np.ndarray:
        """Each value's number, or ``missing`` (into ``out`` when given)."""
        v, stride = _u32(column)
        out, out_stride = _i32_out(v.size, out)
        self.lib.dlrmkit_map_lookup(self.handle, v.ctypes.data, v.size, stride, missing, out.ctypes.data, out_stride)
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        keys, vals = np.empty(n, dtype=np.uint32), np.empty(n, dtype=np.int64)
        self.lib.dlrmkit_map_items(self.handle, keys.ctypes.data, vals.ctypes.data)
        return keys, vals

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        k, v = np.ascontiguousarray(keys, dtype=np.uint32), np.ascontiguousarray(values, dtype=np.int64)
        if not self.lib.dlrmkit_map_insert(self.handle, k.ctypes.data, v.ctypes.data, k.size):
            raise MemoryError("out of memory growing a vocabulary map")

    def slots(self) -> np.ndarray:
        """The map's slots as a `FlatTable` holds them: (key, value) pairs, FLAT_EMPTY where empty."""
        out = np.empty(2 * self.lib.dlrmkit_map_capacity(self.handle), dtype=np.uint32)
        self.lib.dlrmkit_map_export(self.handle, out.ctypes.data)
        return out


FLAT_EMPTY = np.uint32(0xFFFFFFFF)
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)


class FlatTable:
    """A read-only map from uint32 values to indices as one flat array of (key, value) slots, the C
    map's hashing and linear probing: saved to a file, it is mapped by many processes at once (the
    Spark engine's write tasks share one copy per machine through the page cache). Lookups run in
    C where the helpers are compiled, else in numpy, with the same results."""

    def __init__(self, slots: np.ndarray, size: int):
        self.slots, self.size = slots, size
        self.capacity = slots.size // 2

    def __len__(self) -> int:
        return self.size

    @classmethod
    def build(cls, keys: np.ndarray, values: np.ndarray) -> "FlatTable":
        """The table of distinct ``keys`` (below 2^32) and their ``values`` (below 2^31)."""
        lib = library()
        if lib is not None:
            native = NativeMap(lib, keys.size)  # sized up front: no growth, capacity as below
            native.insert(keys, values)
            return cls(native.slots(), keys.size)
        bits = max(4, int(2 * keys.size - 1).bit_length())  # capacity >= 2 x entries, as the C map's
        slots = np.zeros(2 << bits, dtype=np.uint32)
        slots[1::2] = FLAT_EMPTY
        keys, values = keys.astype(np.uint32), values.astype(np.uint32)
        slot = _home(keys, bits)
        todo = np.arange(keys.size)
        while todo.size:  # each round, one key takes each free slot aimed at; the rest probe on
            aim = slot[todo]
            free = slots[2 * aim + 1] == FLAT_EMPTY
            _, first = np.unique(aim[free], return_index=True)
            won = todo[free][first]
            slots[2 * slot[won]], slots[2 * slot[won] + 1] = keys[won], values[won]
            placed = np.zeros(keys.size, dtype=bool)
            placed[won] = True
            todo = todo[~placed[todo]]
            slot[todo] = (slot[todo] + 1) & np.uint64((1 << bits) - 1)
        return cls(slots, keys.size)

    def save(self, path) -> None:
        np.save(path, self.slots)

    @classmethod
    def open(cls, path, size: int) -> "FlatTable":
        """The table saved at ``path`` (``size`` entries), memory-mapped read-only."""
        return cls(np.load(path, mmap_mode="r"), size)

    def lookup(self, column: np.ndarray, missing: int, out: np.ndarray | None = None) -> np.ndarray:
        """Each value's index, or ``missing`` (into the int32 column ``out`` when given)."""
        lib = library()
        if lib is not None:
            v, stride = _u32(column)
            out, out_stride = _i32_out(v.size, out)
            lib.dlrmkit_flat_lookup(self.slots.ctypes.data, self.capacity, v.ctypes.data, v.size, stride, missing,
                                    out.ctypes.data, out_stride)
            return out
        bits = self.capacity.bit_length() - 1
        keys = np.asarray(column, dtype=np.uint32)
        found = np.full(keys.size, missing, dtype=np.int64)
        slot = _home(keys, bits)
        todo = np.arange(keys.size)
        while todo.size:
            aim = slot[todo]
            key, value = self.slots[2 * aim], self.slots[2 * aim + 1]
            hit = (value != FLAT_EMPTY) & (key == keys[todo])
            found[todo[hit]] = value[hit]
            more = (value != FLAT_EMPTY) & ~hit
            todo = todo[more]
            slot[todo] = (aim[more] + 1) & np.uint64(self.capacity - 1)
        if out is None:
            return found.astype(np.int32)
        out[:] = found
        return out


def _home(keys: np.ndarray, bits: int) -> np.ndarray:
    """Each key's first slot: Fibonacci hashing, as in criteo_parse.c."""
    with np.errstate(over="ignore"):
        return (keys.astype(np.uint64) * _FIBONACCI) >> np.uint64(64 - bits)
