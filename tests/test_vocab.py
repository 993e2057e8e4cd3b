"""Vocabularies: first appearance across blocks, NVIDIA's frequency order, hashing, SortedDict."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dlrmkit.data.vocab import FirstAppearance, FrequencyCounter, SortedDict, hash_index


def test_first_appearance_hand_example():
    v = FirstAppearance()
    v.update(np.array([7, 3, 7, 0]))
    v.update(np.array([3, 9, 2**32 - 1, 7]))
    v.update(np.array([], dtype=np.int64))
    v.update(np.array([5, 9, 0]))
    assert v.size() == 6
    np.testing.assert_array_equal(v.values_in_index_order(), np.array([7, 3, 0, 9, 2**32 - 1, 5], dtype=np.uint64))
    np.testing.assert_array_equal(v.apply(np.array([0, 5, 7, 3, 2**32 - 1, 9, 123])), [2, 5, 0, 1, 4, 3, -1])


@pytest.mark.parametrize("seed", range(4))
def test_first_appearance_equals_naive_dict(seed):
    rng = np.random.default_rng(seed)
    v = FirstAppearance()
    naive: dict[int, int] = {}
    seen = []
    for _ in range(12):
        block = rng.zipf(1.3, size=rng.integers(0, 300)) % (2**32)
        block[rng.random(block.size) < 0.1] = 0
        v.update(block)
        seen.append(block)
        for x in block.tolist():
            naive.setdefault(x, len(naive))
    assert v.size() == len(naive)
    np.testing.assert_array_equal(v.values_in_index_order(), np.array(list(naive), dtype=np.uint64))
    allv = np.concatenate(seen)
    np.testing.assert_array_equal(v.apply(allv), [naive[x] for x in allv.tolist()])


def test_frequency_hand_example():
    c = FrequencyCounter()
    c.update(np.array([5, 5, 1, 2, 9, 9]))
    c.update(np.array([2, 2, 7, 9, 4]))
    c.update(np.array([1, 8]))
    # counts: 2->3, 9->3, 5->2, 1->2, 7->1, 4->1, 8->1
    v = c.finish(1)
    np.testing.assert_array_equal(v.values_by_index, [2, 9, 1, 5, 4, 7, 8])
    np.testing.assert_array_equal(v.counts_by_index, [3, 3, 2, 2, 1, 1, 1])
    assert v.size() == 8
    np.testing.assert_array_equal(v.apply(np.array([2, 9, 1, 5, 4, 7, 8, 3, 0])), [0, 1, 2, 3, 4, 5, 6, 7, 7])
    v2 = c.finish(2)
    np.testing.assert_array_equal(v2.values_by_index, [2, 9, 1, 5])
    assert v2.size() == 5
    np.testing.assert_array_equal(v2.apply(np.array([2, 9, 1, 5, 4, 7, 8, 3])), [0, 1, 2, 3, 4, 4, 4, 4])
    v4 = c.finish(4)
    assert v4.size() == 1
    np.testing.assert_array_equal(v4.apply(np.array([2, 9, 100])), [0, 0, 0])


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_frequency_equals_naive(threshold):
    rng = np.random.default_rng(threshold)
    c = FrequencyCounter()
    total = Counter()
    for _ in range(8):
        block = rng.zipf(1.5, size=500) % 1000
        c.update(block)
        total.update(block.tolist())
    v = c.finish(threshold)
    kept = sorted((x for x, n in total.items() if n >= threshold), key=lambda x: (-total[x], x))
    assert v.size() == len(kept) + 1
    np.testing.assert_array_equal(v.values_by_index, kept)
    np.testing.assert_array_equal(v.counts_by_index, [total[x] for x in kept])
    probe = np.arange(1200)
    index = {x: i for i, x in enumerate(kept)}
    np.testing.assert_array_equal(v.apply(probe), [index.get(x, len(kept)) for x in probe.tolist()])


def test_hash_index():
    col = np.array([0, 1, 6, 7, 13, 2**32 - 1], dtype=np.uint32)
    np.testing.assert_array_equal(hash_index(col, 7), [0, 1, 6, 0, 6, (2**32 - 1) % 7])
    np.testing.assert_array_equal(hash_index(col, 1), [0] * 6)


def test_sorted_dict_insert_lookup():
    d = SortedDict()
    d.insert(np.array([50, 10, 30], dtype=np.uint64), np.array([0, 1, 2]))
    d.insert(np.array([20, 2**64 - 1, 0], dtype=np.uint64), np.array([3, 4, 5]))
    assert len(d) == 6
    np.testing.assert_array_equal(d.keys, np.array([0, 10, 20, 30, 50, 2**64 - 1], dtype=np.uint64))
    probe = np.array([10, 50, 0, 2**64 - 1, 20, 30, 40, 60, 5], dtype=np.uint64)
    np.testing.assert_array_equal(d.lookup(probe, missing=-9), [1, 0, 5, 4, 3, 2, -9, -9, -9])
    pos, found = d.find(probe)
    np.testing.assert_array_equal(found, [True] * 6 + [False] * 3)


def test_sorted_dict_random_against_dict():
    rng = np.random.default_rng(5)
    d, ref = SortedDict(), {}
    for _ in range(10):
        keys = np.unique(rng.integers(0, 10_000, 200).astype(np.uint64))
        keys = keys[[int(k) not in ref for k in keys]]
        vals = rng.integers(0, 1 << 40, keys.size)
        d.insert(keys, vals)
        ref.update(zip(keys.tolist(), vals.tolist()))
    probe = np.arange(10_050, dtype=np.uint64)
    np.testing.assert_array_equal(d.lookup(probe, missing=-1), [ref.get(k, -1) for k in probe.tolist()])
