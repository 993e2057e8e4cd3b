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
