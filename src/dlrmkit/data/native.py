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


def _u32(column: np.ndarray) -> np.ndarray:
    """Values as contiguous uint32 (categorical values are below 2^32: at most 8 hex digits)."""
    return np.ascontiguousarray(column, dtype=np.uint32)


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
        v = _u32(column)
        if not self.lib.dlrmkit_map_count(self.handle, v.ctypes.data, v.size, 1):
            raise MemoryError("out of memory growing a vocabulary map")

    def first(self, column: np.ndarray) -> np.ndarray:
        v = _u32(column)
        out = np.empty(v.size, dtype=np.int32)
        if not self.lib.dlrmkit_map_first(self.handle, v.ctypes.data, v.size, 1, out.ctypes.data, 1):
            raise MemoryError("out of memory growing a vocabulary map")
        return out

    def lookup(self, column: np.ndarray, missing: int) -> np.ndarray:
        v = _u32(column)
        out = np.empty(v.size, dtype=np.int32)
        self.lib.dlrmkit_map_lookup(self.handle, v.ctypes.data, v.size, 1, missing, out.ctypes.data, 1)
        return out

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        keys, vals = np.empty(n, dtype=np.uint32), np.empty(n, dtype=np.int64)
        self.lib.dlrmkit_map_items(self.handle, keys.ctypes.data, vals.ctypes.data)
        return keys, vals

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        k, v = _u32(keys), np.ascontiguousarray(values, dtype=np.int64)
        if not self.lib.dlrmkit_map_insert(self.handle, k.ctypes.data, v.ctypes.data, k.size):
            raise MemoryError("out of memory growing a vocabulary map")
