"""torch.distributed for training: joining the process group torchrun sets up, and the few
collectives the trainer uses, each timed, counted in bytes, and failing with a clear message.

A collective fails when another rank died (gloo: the connection closes at once) or stopped
answering (after ``timeout_s``); either way the error names this rank, what it was doing and the
likely cause, instead of hanging. NCCL's collectives are asynchronous: each is waited for where it
is called (its time is then its own, not its launch's), and a rank that stopped answering ends the
job through NCCL's watchdog after ``timeout_s``, with NCCL's message.
"""

from __future__ import annotations

import datetime
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from dlrmkit.config import DIST_BACKENDS as BACKENDS
from dlrmkit.errors import DistributedError
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class CommStats:
    """Seconds spent in, and bytes sent by, each kind of collective on this rank."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, kind: str, seconds: float, nbytes: int) -> None:
        self.seconds[kind] += seconds
        self.bytes[kind] += nbytes
        self.calls[kind] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.bytes.clear()
        self.calls.clear()



@dataclass
class Comm:
    """This process's place in the job and its collectives."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float
    stats: CommStats = field(default_factory=CommStats)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _fail(self, what: str, e: BaseException) -> DistributedError:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return DistributedError(
            f"rank {self.rank} of {self.world_size}: {what} failed: {first}. Another rank has probably "
            f"died or stopped answering (collective timeout {self.timeout_s:g} s); see its log")

    def _run(self, kind: str, what: str, nbytes: int, fn):
        t = time.perf_counter()
        try:
            out = fn()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except (RuntimeError, dist.DistError) as e:
            raise self._fail(what, e) from e
        self.stats.add(kind, time.perf_counter() - t, nbytes)
        return out

    def all_to_all(self, tensor: torch.Tensor, send_counts: list[int], recv_counts: list[int],
                   what: str, kind: str = "all_to_all") -> torch.Tensor:
        """Rows ``tensor[sum(send_counts[:r]) : ...]`` go to rank r; returns the rows received,
        ``recv_counts[r]`` of them from rank r, in rank order."""
        out = tensor.new_empty((sum(recv_counts),) + tuple(tensor.shape[1:]))
        row_bytes = tensor[:1].numel() * tensor.element_size() if tensor.dim() else tensor.element_size()
        sent = (sum(send_counts) - send_counts[self.rank]) * row_bytes
        self._run(kind, what, sent, lambda: dist.all_to_all_single(
            out, tensor.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts))
        return out

    def exchange_counts(self, send_counts: torch.Tensor, what: str) -> list[int]:
        """Each rank's ``send_counts[r]`` arrives at rank r: returns how many rows each rank sends here."""
        recv = torch.empty_like(send_counts)
        self._run("counts", what, send_counts.numel() * 8, lambda: dist.all_to_all_single(recv, send_counts))
        return recv.tolist()

    def all_reduce_(self, tensor: torch.Tensor, what: str, kind: str = "all_reduce") -> torch.Tensor:
        """Sum over ranks, in place. Bytes counted as a ring all-reduce sends: 2 (W-1)/W of the buffer."""
        nbytes = int(2 * (self.world_size - 1) / self.world_size * tensor.numel() * tensor.element_size())
        self._run(kind, what, nbytes, lambda: dist.all_reduce(tensor))
        return tensor

    def all_gather(self, tensor: torch.Tensor, what: str) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape on all ranks), in rank order."""
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        nbytes = tensor.numel() * tensor.element_size() * (self.world_size - 1)
        self._run("all_gather", what, nbytes, lambda: dist.all_gather(parts, tensor.contiguous()))
        return parts

    def barrier(self, what: str) -> None:
        self._run("barrier", what, 0, lambda: dist.barrier())

    def close(self, finished: bool = True) -> None:
        """Leave the process group; after a ``finished`` run, only once every rank is done (a rank
        tearing its connections down while a peer is still working can abort that peer)."""
        if not dist.is_initialized():
            return
        if finished:
            self.barrier("finishing")
        dist.destroy_process_group()


class AllToAll(torch.autograd.Function):
    """all_to_all with a backward: the gradients travel the same way back."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, comm: Comm, send_counts: list[int], recv_counts: list[int],
                what: str) -> torch.Tensor:
        ctx.comm, ctx.send_counts, ctx.recv_counts, ctx.what = comm, send_counts, recv_counts, what
        return comm.all_to_all(tensor, send_counts, recv_counts, what, kind="all_to_all_forward")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        back = ctx.comm.all_to_all(grad, ctx.recv_counts, ctx.send_counts, f"{ctx.what} (backward)",
                                   kind="all_to_all_backward")
        return back, None, None, None, None


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def join(backend: str = "auto", timeout_s: float = 600.0) -> Comm:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT). ``auto``: NCCL with one GPU per local rank when CUDA is present,
    else gloo on CPU."""
    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise DistributedError(f"distributed training needs torchrun's environment; {', '.join(missing)} "
                               f"not set. Launch with `torchrun --nproc-per-node N -m dlrmkit train ...` "
                               f"or `dlrmkit train --nproc N ...`")
    if backend not in BACKENDS:
        raise DistributedError(f"backend must be one of {BACKENDS}, got {backend!r}")
    rank, world, local_rank = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError("backend nccl needs CUDA GPUs and none is visible; use --dist-backend gloo")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible "
                                   f"on this node; start at most that many processes per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    try:
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if backend == "nccl" else None)
    except (RuntimeError, ValueError, dist.DistError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"rank {rank} of {world}: cannot join the process group at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({backend}): {first}") from e
    return Comm(rank, world, local_rank, device, backend, timeout_s)
