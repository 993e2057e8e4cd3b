"""dlrmkit's DLRM against the DLRM reference's DLRM_Net, in one run, same shape, batch, threads.

    python benchmarks/bench_vs_reference.py --reference-dir PATH/TO/facebookresearch-dlrm

PATH is a checkout of github.com/facebookresearch/dlrm (not part of dlrmkit; its script needs
``tqdm`` and ``tensorboard`` importable). Both models take the same pre-built batch (Kaggle
shape: 26 tables of 100k rows, dim 16, 13-512-256-64-16, 512-256-1, dot), so only the model step
is timed: forward + BCE + backward + SGD with sparse embedding gradients, and inference. Rounds
alternate the two models; each figure is the best round's median of 5 x 20 steps.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from dlrmkit.config import preset
from dlrmkit.model import build_model
from dlrmkit.train.optim import DLRMOptimizer
from timing import seconds_per_call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--rows-per-table", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    sys.path.insert(0, args.reference_dir)
    saved_argv, sys.argv = sys.argv, [sys.argv[0]]
    import dlrm_s_pytorch as reference  # noqa: E402  (the user's checkout)
    sys.argv = saved_argv

    torch.set_num_threads(args.threads)
    b, rows = args.batch_size, args.rows_per_table
    ref = reference.DLRM_Net(16, np.array([rows] * 26), np.array([13, 512, 256, 64, 16]), np.array([367, 512, 256, 1]),
                             arch_interaction_op="dot", arch_interaction_itself=False, sigmoid_bot=-1,
                             sigmoid_top=2, sync_dense_params=True, loss_threshold=0.0, ndevices=-1,
                             qr_flag=False, md_flag=False, weighted_pooling=None, loss_function="bce")
    g = torch.Generator().manual_seed(0)
    dense = torch.rand(b, 13, generator=g)
    indices = torch.randint(0, rows, (b, 26), generator=g)
    label = (torch.rand(b, generator=g) < 0.25).float()
    offsets = [torch.arange(b) for _ in range(26)]
    per_table = [indices[:, k].contiguous() for k in range(26)]
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01)
    ours = build_model(preset("kaggle", (rows,) * 26), seed=0)
    our_opt = DLRMOptimizer(ours, "sgd")

    def ref_train():
        loss = ref.loss_fn(ref(dense, offsets, per_table), label.unsqueeze(1))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()

    def our_train():
        loss = F.binary_cross_entropy_with_logits(ours(dense, indices), label)
        our_opt.zero_grad()
        loss.backward()
        our_opt.step(0.01)

    def ref_infer():
        with torch.inference_mode():
            ref(dense, offsets, per_table)

    def our_infer():
        with torch.inference_mode():
            ours(dense, indices)

    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in (("reference train", ref_train), ("dlrmkit train", our_train),
                         ("reference inference", ref_infer), ("dlrmkit inference", our_infer)):
            best[name] = max(best.get(name, 0.0), b / seconds_per_call(fn))
    print(f"kaggle shape, batch {b}, {args.threads} threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| step | DLRM reference | dlrmkit | ratio |")
    print("|---|---|---|---|")
    for kind in ("train", "inference"):
        r, o = best[f"reference {kind}"], best[f"dlrmkit {kind}"]
        print(f"| {kind} | {r / 1e3:.1f}k | {o / 1e3:.1f}k | {o / r:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
