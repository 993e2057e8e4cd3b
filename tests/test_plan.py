"""plan_shards / ShardPlan: every row on exactly one rank, the table-wise, row-wise and auto
policies, lookup routing, and the plan's dict form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dlrmkit.config import KAGGLE_CARDINALITIES, SHARDINGS
from dlrmkit.train.plan import Shard, ShardPlan, plan_shards

KAGGLE_SMALL = tuple(max(1, c // 10_000) for c in KAGGLE_CARDINALITIES)  # 1 .. 1013 rows
TABLE_SIZES = [
    (1,),
    (1000,),
    (2, 1, 3),  # every table smaller than some world sizes
    (10, 7, 5, 3),
    (7, 50, 3, 20),
    (5, 5, 5, 5, 5, 5),
    (100, 1, 1, 1),  # one table holding almost everything
    KAGGLE_SMALL,
]
WORLDS = [1, 2, 3, 4, 5]


def _cases():
    for sizes in TABLE_SIZES:
        for world in WORLDS:
            for sharding in SHARDINGS:
                yield sizes, world, sharding


def _loads(plan: ShardPlan) -> list[int]:
    return [plan.rows_on(r) for r in range(plan.world_size)]


@pytest.mark.parametrize("sizes,world,sharding", list(_cases()))
def test_every_row_held_exactly_once(sizes, world, sharding):
    plan = plan_shards(sizes, world, sharding)
    assert plan.table_sizes == tuple(sizes) and plan.world_size == world and plan.sharding == sharding
    painted = [np.zeros(n, dtype=np.int64) for n in sizes]
    for s in plan.shards:
        assert isinstance(s, Shard)
        assert 0 <= s.rank < world
        assert 0 <= s.table < len(sizes)
        assert 0 <= s.row_lo < s.row_hi <= sizes[s.table], s  # contiguous and non-empty
        painted[s.table][s.row_lo:s.row_hi] += 1
    for f, p in enumerate(painted):
        assert (p == 1).all(), (f, p)
    # shards listed rank by rank, each rank's in (table, row_lo) order
    keys = [(s.rank, s.table, s.row_lo) for s in plan.shards]
    assert keys == sorted(keys)
    assert sum(_loads(plan)) == sum(sizes)
    assert sum(len(plan.local(r)) for r in range(world)) == len(plan.shards)


@pytest.mark.parametrize("sizes", TABLE_SIZES)
@pytest.mark.parametrize("world", WORLDS)
def test_table_wise_whole_tables_greedy_balance(sizes, world):
    plan = plan_shards(sizes, world, "table-wise")
    assert len(plan.shards) == len(sizes)
    assert sorted(s.table for s in plan.shards) == list(range(len(sizes)))
    assert all(s.row_lo == 0 and s.row_hi == sizes[s.table] for s in plan.shards)
    loads = _loads(plan)
    assert max(loads) <= min(loads) + max(sizes)


def test_table_wise_is_largest_first_to_least_loaded():
    # 10 -> r0; 7 -> r1; 5 -> r1 (7 < 10); 3 -> r0 (10 < 12)
    plan = plan_shards((3, 10, 5, 7), 2, "table-wise")
    owner = {s.table: s.rank for s in plan.shards}
    assert owner == {1: 0, 3: 1, 2: 1, 0: 0}
    assert _loads(plan) == [13, 12]
    # ties go to the lowest rank
    plan = plan_shards((4, 4, 4), 3, "table-wise")
    assert {s.table: s.rank for s in plan.shards} == {0: 0, 1: 1, 2: 2}


@pytest.mark.parametrize("sizes", TABLE_SIZES)
@pytest.mark.parametrize("world", WORLDS)
def test_row_wise_cuts_each_table_into_near_equal_ranges(sizes, world):
    plan = plan_shards(sizes, world, "row-wise")
    for f, n in enumerate(sizes):
        _assert_row_wise(plan, f)


def _assert_row_wise(plan: ShardPlan, f: int) -> None:
    """Table f cut into one range per rank (empty ranges left out), sizes differing by at most 1."""
    mine = [s for s in plan.shards if s.table == f]
    ranks = [s.rank for s in mine]
    assert len(ranks) == len(set(ranks)), "one range per rank"
    per_rank = [0] * plan.world_size
    for s in mine:
        per_rank[s.rank] = s.rows
    n = plan.table_sizes[f]
    assert sum(per_rank) == n
    assert max(per_rank) - min(per_rank) <= 1, (f, per_rank)
    assert len(mine) == min(n, plan.world_size)


@pytest.mark.parametrize("sizes", TABLE_SIZES)
@pytest.mark.parametrize("world", WORLDS)
def test_auto_splits_only_tables_larger_than_an_even_share(sizes, world):
    plan = plan_shards(sizes, world, "auto")
    share = math.ceil(sum(sizes) / world)
    for f, n in enumerate(sizes):
        mine = [s for s in plan.shards if s.table == f]
        if n > share and world > 1:
            _assert_row_wise(plan, f)
        else:
            assert len(mine) == 1 and mine[0].rows == n, (f, mine)


def test_auto_concrete_and_threshold():
    # total 104, world 2 -> share 52: only the 100-row table is cut
    plan = plan_shards((100, 1, 1, 2), 2, "auto")
    assert [s for s in plan.shards if s.table == 0] == [Shard(0, 0, 50, 0), Shard(0, 50, 100, 1)]
    assert _loads(plan) == [52, 52]  # the whole tables go on top of the row-wise load
    # an explicit threshold: tables of more than 5 rows are cut, the others whole
    sizes = (7, 50, 3, 20, 5)
    plan = plan_shards(sizes, 3, "auto", row_wise_min_rows=5)
    for f, n in enumerate(sizes):
        mine = [s for s in plan.shards if s.table == f]
        if n > 5:
            _assert_row_wise(plan, f)
        else:
            assert len(mine) == 1 and mine[0].rows == n, (f, mine)
    # a threshold above every table: all whole
    plan = plan_shards(sizes, 3, "auto", row_wise_min_rows=50)
    assert all(s.rows == sizes[s.table] for s in plan.shards)


@pytest.mark.parametrize("sizes", TABLE_SIZES)
def test_auto_on_one_rank_keeps_everything_whole_on_rank_0(sizes):
    for threshold in (None, 0):
        plan = plan_shards(sizes, 1, "auto", row_wise_min_rows=threshold)
        assert plan.shards == tuple(Shard(f, 0, n, 0) for f, n in enumerate(sizes))


@pytest.mark.parametrize("sizes,world,sharding", list(_cases()))
def test_routes_match_brute_force_lookup(sizes, world, sharding, rng):
    plan = plan_shards(sizes, world, sharding)
    starts_of_table = np.concatenate([[0], np.cumsum(sizes)])
    assert np.array_equal(plan.table_starts(), starts_of_table[:-1])
    total = int(starts_of_table[-1])
    owner = np.full(total, -1)
    local = np.full(total, -1)
    for r in range(world):
        fused = np.concatenate([np.arange(starts_of_table[s.table] + s.row_lo, starts_of_table[s.table] + s.row_hi)
                                for s in plan.local(r)] or [np.zeros(0, dtype=np.int64)])
        assert len(fused) == plan.rows_on(r)
        owner[fused] = r
        local[fused] = np.arange(len(fused))
    assert (owner >= 0).all()

    starts, ranks, bases = plan.routes()
    assert starts[0] == 0 and (np.diff(starts) > 0).all()
    assert len(starts) == len(ranks) == len(bases) == len(plan.shards)
    rows = np.concatenate([rng.integers(0, total, 500), [0, total - 1], starts, starts[1:] - 1])
    k = np.searchsorted(starts, rows, side="right") - 1
    assert np.array_equal(ranks[k], owner[rows])
    assert np.array_equal(rows - starts[k] + bases[k], local[rows])


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_dict_round_trip(sharding):
    plan = plan_shards(KAGGLE_SMALL, 3, sharding)
    d = plan.to_dict()
    assert ShardPlan.from_dict(d) == plan
    assert ShardPlan.from_dict(json.loads(json.dumps(d))) == plan  # plain values only


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="sharding"):
        plan_shards((3, 4), 2, "column-wise")
    for world in (0, -1):
        with pytest.raises(ValueError, match="world_size"):
            plan_shards((3, 4), world, "auto")


def test_describe_names_every_rank():
    text = plan_shards((100, 1, 1, 2), 2, "auto").describe()
    assert "rank 0: 52 rows (1 whole tables, 1 row ranges)" in text
    assert "rank 1: 52 rows (2 whole tables, 1 row ranges)" in text
