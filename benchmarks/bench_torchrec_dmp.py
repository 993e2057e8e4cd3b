"""Training throughput of TorchRec's DLRM under DistributedModelParallel on CPU with gloo.

Standalone (does not import dlrmkit); needs torch + torchrec + fbgemm-gpu-cpu in its env:

    torchrun --nproc-per-node N benchmarks/bench_torchrec_dmp.py \
        [--sharding table-wise|row-wise|auto] [--steps 20] [--warmup 20] [--threads T]
    torchrun --nproc-per-node 2 benchmarks/bench_torchrec_dmp.py --a2a-only

Shape ``kaggle``: 26 tables of 100k rows, dim 16, 13 dense features, dense arch
[512,256,64,16], over arch [512,256,1], one id per feature per sample, global batch 2048
split evenly over the ranks. Tables: fused SGD (apply_optimizer_in_backward -> FBGEMM TBE
fused optimizer); dense parts: plain SGD, both lr 0.1. Batches are built before timing;
each repeat times ``--steps`` steps between two barriers, after ``--warmup`` untimed steps.
Rank 0 prints global samples/s (median over ``--repeats``) and one JSON line.

``--a2a-only`` times just torch.distributed.all_to_all_single on a float32 tensor of the
pooled-embedding volume (global batch x 26 x 16), split evenly between the ranks, and an
all_reduce of the dense parameters' size (475,985 floats: what DDP syncs each step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.distributed as dist

N_TABLES = 26
ROWS = 100_000
DIM = 16
N_DENSE = 13


def a2a_only(args: argparse.Namespace, rank: int, world: int) -> None:
    n = args.batch_size * N_TABLES * DIM  # global volume, float32
    per_rank = n // world
    inp = torch.randn(per_rank)
    out = torch.empty(per_rank)
    for _ in range(args.warmup):
        dist.all_to_all_single(out, inp)
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            dist.all_to_all_single(out, inp)
        dist.barrier()
        times.append((time.perf_counter() - t0) / args.steps)
    # DDP's gradient all-reduce of the dense parts: 13-512-256-64-16 + 367-512-256-1
    dense_params = 155_984 + 320_001
    g = torch.randn(dense_params)
    for _ in range(args.warmup):
        dist.all_reduce(g)
    ar_times = []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            dist.all_reduce(g)
        dist.barrier()
        ar_times.append((time.perf_counter() - t0) / args.steps)
    if rank == 0:
        ar = statistics.median(ar_times)
        print(f"all_reduce {dense_params * 4 / 2**20:.2f} MiB: {ar * 1e3:.3f} ms")
        med = statistics.median(times)
        res = {
            "mode": "a2a",
            "allreduce_dense_grads_median_ms": ar * 1e3,
            "world_size": world,
            "threads": torch.get_num_threads(),
            "global_floats": n,
            "per_rank_bytes": per_rank * 4,
            "median_ms": med * 1e3,
            "all_ms": [t * 1e3 for t in times],
        }
        print(f"all_to_all_single {per_rank * 4 / 2**20:.2f} MiB/rank: {med * 1e3:.3f} ms")
        print("RESULT " + json.dumps(res))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sharding", choices=("table-wise", "row-wise", "auto"), default="table-wise")
    p.add_argument("--batch-size", type=int, default=2048, help="global batch")
    p.add_argument("--rows-per-table", type=int, default=ROWS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="per process; 0 = 2 // world_size")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--a2a-only", action="store_true")
    p.add_argument("--force-cpu-row-wise", action="store_true",
                   help="let the sharder offer ROW_WISE on cpu (torchrec 1.8 allows it on cuda only)")
    args = p.parse_args()

    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    threads = args.threads or max(1, 2 // world)
    torch.set_num_threads(threads)
    torch.manual_seed(1234 + rank)

    if args.a2a_only:
        a2a_only(args, rank, world)
        dist.destroy_process_group()
        return 0

    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.datasets.utils import Batch
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.types import ShardingType
    from torchrec.models.dlrm import DLRM, DLRMTrain
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    device = torch.device("cpu")
    keys = [f"cat_{i}" for i in range(N_TABLES)]
    tables = [
        EmbeddingBagConfig(
            name=f"t_{k}", embedding_dim=DIM, num_embeddings=args.rows_per_table, feature_names=[k]
        )
        for k in keys
    ]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    model = DLRMTrain(
        DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=N_DENSE,
            dense_arch_layer_sizes=[512, 256, 64, DIM],
            over_arch_layer_sizes=[512, 256, 1],
            dense_device=device,
        )
    )
    # fused table optimizer: DMP turns this into FBGEMM TBE's in-kernel SGD
    apply_optimizer_in_backward(
        torch.optim.SGD, model.model.sparse_arch.parameters(), {"lr": args.lr}
    )

    constraints = None
    if args.sharding != "auto":
        st = {"table-wise": ShardingType.TABLE_WISE, "row-wise": ShardingType.ROW_WISE}[args.sharding]
        constraints = {t.name: ParameterConstraints(sharding_types=[st.value]) for t in tables}
    topology = Topology(world_size=world, compute_device="cpu", local_world_size=world)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    if args.force_cpu_row_wise:
        # torchrec 1.8's EmbeddingBagCollectionSharder offers ROW_WISE only for cuda/mtia;
        # this subclass adds it for cpu, to see whether the rest of the stack copes.
        class _Sharder(EmbeddingBagCollectionSharder):
            def sharding_types(self, compute_device_type: str) -> list[str]:
                types = super().sharding_types(compute_device_type)
                if ShardingType.ROW_WISE.value not in types:
                    types.append(ShardingType.ROW_WISE.value)
                return types

        sharders = [_Sharder()]
    else:
        sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=device, plan=plan, sharders=sharders)

    dense_opt = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.SGD(params, lr=args.lr),
    )
    opt = CombinedOptimizer([dmp.fused_optimizer, dense_opt])

    # what actually runs the tables (ShardedEBC keeps its lookups in a plain list)
    kinds = set()
    for _, mod in dmp.named_modules():
        if type(mod).__name__ != "ShardedEmbeddingBagCollection":
            continue
        kinds.add(type(mod).__name__)
        for sharding in getattr(mod, "_embedding_shardings", []):
            kinds.add(type(sharding).__name__)
        for lookup in getattr(mod, "_lookups", []):
            lk = getattr(lookup, "module", lookup)  # maybe DDP-wrapped
            kinds.add(type(lk).__name__)
            for em in getattr(lk, "_emb_modules", []):
                kinds.add(type(em).__name__)
                inner = getattr(em, "emb_module", None)
                if inner is not None:
                    kinds.add(f"{type(inner).__module__}.{type(inner).__name__}"
                              f"(optimizer={getattr(inner, 'optimizer', '?')})")
    plan_summary = {}
    for mod_path, mplan in plan.plan.items():
        for tname, ps in mplan.items():
            plan_summary.setdefault(f"{ps.sharding_type}/{ps.compute_kernel}", []).append(
                (tname, [s.placement.rank() for s in (ps.sharding_spec.shards if ps.sharding_spec else [])])
            )

    # pre-built batches (local part of the global batch)
    local_b = args.batch_size // world
    n_batches = 25
    batches = []
    for _ in range(n_batches):
        values = torch.randint(0, args.rows_per_table, (N_TABLES * local_b,), dtype=torch.long)
        lengths = torch.ones(N_TABLES * local_b, dtype=torch.int32)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths)
        batches.append(
            Batch(
                dense_features=torch.rand(local_b, N_DENSE),
                sparse_features=kjt,
                labels=torch.randint(0, 2, (local_b,)),
            )
        )

    dmp.train()
    it = [0]

    def step() -> float:
        b = batches[it[0] % n_batches]
        it[0] += 1
        opt.zero_grad()
        loss, _ = dmp(b)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            last = step()
        dist.barrier()
        times.append(time.perf_counter() - t0)

    if rank == 0:
        rates = [args.steps * args.batch_size / t for t in times]
        med = statistics.median(rates)
        res = {
            "mode": "train",
            "world_size": world,
            "threads_per_proc": threads,
            "sharding": args.sharding,
            "force_cpu_row_wise": args.force_cpu_row_wise,
            "global_batch": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "samples_per_s_median": round(med),
            "samples_per_s_all": [round(r) for r in rates],
            "ms_per_step_median": 1e3 * args.batch_size / med,
            "last_loss": last,
            "plan": {k: [t for t, _ in v][:3] + ([f"...{len(v)} tables"] if len(v) > 3 else [])
                     for k, v in plan_summary.items()},
            "tables_per_rank": {k: {str(r): sum(ranks.count(r) for _, ranks in v) for r in range(world)}
                                for k, v in plan_summary.items()},
            "shards_of_first_table": {k: v[0][1] for k, v in plan_summary.items()},
            "module_kinds": sorted(kinds),
            "torch": torch.__version__,
        }
        print(f"world={world} threads/proc={threads} sharding={args.sharding}: "
              f"{med:,.0f} samples/s (median of {args.repeats}; {rates})")
        print("RESULT " + json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
