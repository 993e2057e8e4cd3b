"""Sharded checkpoints without torch.distributed: shard files written as each rank would, read
whole (load_checkpoint), by row range (RowReader), linked, cleaned; and the per-row initializer
that lets a rank draw only its own rows."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from dlrmkit.checkpoint import checkpoint_payload, load_checkpoint, model_from_checkpoint, write_atomic
from dlrmkit.checkpoint_shards import (WEIGHT_KEY, RowReader, link_checkpoint, remove_stale_shards,
                                       shard_file_name, write_shard)
from dlrmkit.config import preset
from dlrmkit.errors import CheckpointError
from dlrmkit.model import build_model
from dlrmkit.model.embedding import INIT_BLOCK_ROWS, EmbeddingTables, init_rows
from dlrmkit.train.optim import DLRMOptimizer
from dlrmkit.train.plan import plan_shards

SIZES = (7, 50, 3, 20)
STARTS = (0, 7, 57, 60)
PLANS = [(2, "table-wise"), (3, "table-wise"), (2, "row-wise"), (3, "row-wise")]


def _full_arrays(seed: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(SIZES), dim, generator=g), torch.rand(sum(SIZES), generator=g)


def _payload(cfg, weight=None, acc=None, step=5) -> dict:
    """A checkpoint payload as a run writes it: the whole tables only when ``weight`` is given."""
    model = build_model(cfg, seed=0)
    state = {k: v for k, v in model.state_dict().items() if k != WEIGHT_KEY}
    if weight is not None:
        state[WEIGHT_KEY] = weight
    dense = DLRMOptimizer(model, "adagrad").state_dict()["dense"]
    sparse = {} if acc is None else {"accumulator": acc}
    return checkpoint_payload(state, cfg, optimizer_state={"name": "adagrad", "dense": dense, "sparse": sparse},
                              train_state={"step": step})


def _write_sharded(path, plan, weight, acc, step=5, files=None):
    """Every rank's shard file, then the checkpoint naming them, as Distributed.save does."""
    cfg = preset("tiny", SIZES)
    names = []
    for r in range(plan.world_size):
        ranges = [(s.table, s.row_lo, s.row_hi) for s in plan.local(r)]
        rows = [slice(STARTS[t] + lo, STARTS[t] + hi) for t, lo, hi in ranges]
        name = shard_file_name(path.name, step, r, plan.world_size)
        write_shard(path.parent / name, ranges, torch.cat([weight[s] for s in rows]),
                    torch.cat([acc[s] for s in rows]))
        names.append(name)
    payload = _payload(cfg, step=step)
    if files is None:
        files = [{"name": n, "ranges": [[s.table, s.row_lo, s.row_hi] for s in plan.local(r)]}
                 for r, n in enumerate(names)]
    payload["sharded"] = {"world_size": plan.world_size, "plan": plan.to_dict(), "files": files}
    write_atomic(path, payload)
    remove_stale_shards(path, set(names))
    return path


@pytest.fixture(params=PLANS, ids=[f"{w}-{s}" for w, s in PLANS])
def sharded(request, tmp_path):
    world, sharding = request.param
    plan = plan_shards(SIZES, world, sharding)
    weight, acc = _full_arrays(1, preset("tiny", SIZES).embedding_dim)
    return _write_sharded(tmp_path / "checkpoint.pt", plan, weight, acc), plan, weight, acc


def _shard_files(d, name):
    return sorted(p.name for p in d.iterdir() if p.name.startswith(name + ".step"))


def test_load_assembles_whole_tables(sharded):
    path, plan, weight, acc = sharded
    ckpt = load_checkpoint(path)
    assert "sharded" not in ckpt
    assert torch.equal(ckpt["model_state"][WEIGHT_KEY], weight)
    assert torch.equal(ckpt["optimizer_state"]["sparse"]["accumulator"], acc)
    model, _ = model_from_checkpoint(ckpt, str(path))  # a one-process model takes it as it is
    assert torch.equal(model.embeddings.weight.detach(), weight)
    DLRMOptimizer(model, "adagrad").load_state_dict(ckpt["optimizer_state"])


def test_row_reader_reads_any_range(sharded, tmp_path):
    path, plan, weight, acc = sharded
    ckpt = load_checkpoint(path, assemble_shards=False)
    assert ckpt["sharded"]["world_size"] == plan.world_size
    assert WEIGHT_KEY not in ckpt["model_state"]
    single = write_atomic(tmp_path / "single.pt", _payload(preset("tiny", SIZES), weight, acc))
    readers = [RowReader(ckpt, path), RowReader(load_checkpoint(single, assemble_shards=False), single)]
    for t, n in enumerate(SIZES):
        for lo in range(n):
            for hi in range(lo + 1, n + 1):
                for reader in readers:
                    w, a = reader.read(t, lo, hi)
                    rows = slice(STARTS[t] + lo, STARTS[t] + hi)
                    assert torch.equal(w, weight[rows]), (t, lo, hi)
                    assert torch.equal(a, acc[rows]), (t, lo, hi)


def test_missing_shard_file_is_named(sharded):
    path, plan, _, _ = sharded
    missing = shard_file_name(path.name, 5, plan.world_size - 1, plan.world_size)
    (path.parent / missing).unlink()
    with pytest.raises(CheckpointError, match=f"{missing} is missing"):
        load_checkpoint(path)


def test_corrupt_shard_file_is_named(sharded):
    path, plan, _, _ = sharded
    victim = path.parent / shard_file_name(path.name, 5, 0, plan.world_size)
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{victim.name}: cannot be read"):
        load_checkpoint(path)


def test_uncovered_rows_name_the_table(sharded):
    path, plan, weight, acc = sharded
    files = [{"name": shard_file_name(path.name, 5, r, plan.world_size),
              "ranges": [[s.table, s.row_lo, s.row_hi] for s in plan.local(r)]} for r in range(plan.world_size)]
    table = files[-1]["ranges"][-1][0]
    del files[-1]["ranges"][-1]  # its rows are still in the file, but no checkpoint entry names them
    _write_sharded(path, plan, weight, acc, files=files)
    # caught as rows missing from the table, or as a shard file that does not match its entry
    expected = f"of table {table}, its shard files miss|do not belong together"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)
    reader = RowReader(load_checkpoint(path, assemble_shards=False), path)
    with pytest.raises(CheckpointError, match=expected):
        reader.read(table, 0, SIZES[table])


def test_link_sharded_checkpoint(sharded):
    src, plan, weight, acc = sharded
    d = src.parent
    dst = d / "best.pt"
    src_files = {n: (d / n).read_bytes() for n in _shard_files(d, src.name) + [src.name]}
    link_checkpoint(src, dst)
    world = plan.world_size
    assert _shard_files(d, dst.name) == [shard_file_name(dst.name, 5, r, world) for r in range(world)]
    assert {n: (d / n).read_bytes() for n in _shard_files(d, src.name) + [src.name]} == src_files
    got = load_checkpoint(dst)
    assert torch.equal(got["model_state"][WEIGHT_KEY], weight)
    assert torch.equal(got["optimizer_state"]["sparse"]["accumulator"], acc)
    assert torch.equal(load_checkpoint(src)["model_state"][WEIGHT_KEY], weight)

    # a newer checkpoint linked to the same name: dst's step-5 files go, src's old ones went on save
    weight2, acc2 = _full_arrays(2, weight.shape[1])
    _write_sharded(src, plan, weight2, acc2, step=9)
    assert _shard_files(d, src.name) == [shard_file_name(src.name, 9, r, world) for r in range(world)]
    assert torch.equal(load_checkpoint(dst)["model_state"][WEIGHT_KEY], weight)  # links survive src's cleanup
    link_checkpoint(src, dst)
    assert _shard_files(d, dst.name) == [shard_file_name(dst.name, 9, r, world) for r in range(world)]
    got = load_checkpoint(dst)
    assert torch.equal(got["model_state"][WEIGHT_KEY], weight2)
    assert torch.equal(got["optimizer_state"]["sparse"]["accumulator"], acc2)

    # then a single-file checkpoint (a run resumed on one process): dst is src, no shard files left
    single = write_atomic(src, _payload(preset("tiny", SIZES), weight, acc, step=12))
    link_checkpoint(single, dst)
    assert dst.read_bytes() == single.read_bytes()
    assert _shard_files(d, dst.name) == []


def test_remove_stale_shards_only_touches_its_own_name(tmp_path):
    names = ["checkpoint.pt", "checkpoint.pt.step3.shard0-of-2", "checkpoint.pt.step3.shard1-of-2",
             "checkpoint.pt.step5.shard0-of-2", "checkpoint.pt.step5.shard1-of-2", "best.pt.step3.shard0-of-2",
             "old_checkpoint.pt.step3.shard0-of-2", "checkpoint.pt.step3.shard0-of-2.bak",
             "checkpointXpt.step3.shard0-of-2", ".checkpoint.pt.step3.shard0-of-2.tmp-12"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    remove_stale_shards(tmp_path / "checkpoint.pt", {"checkpoint.pt.step5.shard0-of-2",
                                                      "checkpoint.pt.step5.shard1-of-2"})
    gone = {"checkpoint.pt.step3.shard0-of-2", "checkpoint.pt.step3.shard1-of-2"}
    assert sorted(os.listdir(tmp_path)) == sorted(set(names) - gone)


ROWS = 200_000  # 4 init blocks: 3 whole and a partial one
RANGES = [(0, 1), (0, 10), (5, 5), (65_530, 65_540), (INIT_BLOCK_ROWS, INIT_BLOCK_ROWS + 1), (60_000, 140_000),
          (131_071, 196_609), (196_600, ROWS), (ROWS - 1, ROWS), (0, ROWS)]


@pytest.mark.parametrize("seed", [0, 7, 2**31 - 2])
def test_init_rows_match_whole_table(seed):
    assert -(-ROWS // INIT_BLOCK_ROWS) == 4
    whole = EmbeddingTables((ROWS,), 3, seed=seed).weight.detach()
    bound = 1 / math.sqrt(ROWS)
    assert whole.abs().max() <= bound
    assert whole.abs().max() > 0.99 * bound and whole.mean().abs() < 0.01 * bound  # fills the interval
    for lo, hi in RANGES:
        part = init_rows(torch.full((hi - lo, 3), float("nan")), seed, 0, ROWS, lo)
        assert torch.equal(part, whole[lo:hi]), (lo, hi)
    # each block draws its own values
    blocks = [whole[b * INIT_BLOCK_ROWS:b * INIT_BLOCK_ROWS + 100] for b in range(4)]
    assert all(not torch.equal(blocks[i], blocks[j]) for i in range(4) for j in range(i))


def test_init_rows_depend_on_seed_and_table():
    a = EmbeddingTables((ROWS,), 3, seed=1).weight.detach()
    b = EmbeddingTables((ROWS,), 3, seed=2).weight.detach()
    assert (a != b).float().mean() > 0.99
    two = EmbeddingTables((ROWS, 1000), 3, seed=1)
    assert torch.equal(two.table(0).detach(), a)
    t1 = two.table(1).detach()
    assert t1.abs().max() <= 1 / math.sqrt(1000)
    assert torch.equal(init_rows(torch.empty(600, 3), 1, 1, 1000, 400), t1[400:])
    other = init_rows(torch.empty(1000, 3), 1, 0, 1000, 0)  # same seed and size, table 0
    assert (other != t1).float().mean() > 0.99


def _two_file_checkpoint(d: Path, entries: list[tuple[str, list, torch.Tensor]]) -> Path:
    """A 10-row table, dim 16, whose shard files hold ``rows`` for the listed ranges."""
    cfg = preset("tiny", (10,))
    payload = checkpoint_payload({}, cfg)
    files = []
    for name, ranges, rows in entries:
        write_shard(d / name, [tuple(r) for r in ranges], rows, None)
        files.append({"name": name, "ranges": ranges})
    payload["sharded"] = {"world_size": len(entries), "plan": {}, "files": files}
    return write_atomic(d / "ck.pt", payload)


def test_rows_held_twice_and_missing_are_caught(tmp_path):
    w = torch.arange(160, dtype=torch.float32).view(10, 16)
    path = _two_file_checkpoint(tmp_path, [("a", [[0, 0, 5]], w[:5]), ("b", [[0, 0, 5]], w[:5])])
    with pytest.raises(CheckpointError, match=r"miss 5 and hold 5 more than once"):
        load_checkpoint(path)


def test_shard_file_not_matching_its_entry_is_caught(tmp_path):
    w = torch.arange(160, dtype=torch.float32).view(10, 16)
    path = _two_file_checkpoint(tmp_path, [("c", [[0, 0, 10]], w[:4])])
    with pytest.raises(CheckpointError, match=r"holds 4 rows .* lists 10 rows .* do not belong together"):
        load_checkpoint(path)
