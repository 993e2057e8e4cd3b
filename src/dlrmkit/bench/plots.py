"""Latency plots of a run (PNG): the distribution with p50/p90/p99 marked, and latency over time.

Latencies are the SUT's view: from LoadGen's issue call to QuerySamplesComplete, per sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sample_latencies(timings: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(completion time in s since the first issue, latency in ms), one entry per sample."""
    if not timings:
        return np.empty(0), np.empty(0)
    t = np.asarray(timings, dtype=np.int64)  # (tasks, 3): issued_ns, completed_ns, samples
    order = np.argsort(t[:, 1], kind="stable")
    t = t[order]
    done = np.repeat((t[:, 1] - t[:, 0].min()) / 1e9, t[:, 2])
    latency = np.repeat((t[:, 1] - t[:, 0]) / 1e6, t[:, 2])
    return done, latency


def write_plots(out: Path, scenario: str, timings: list[tuple[int, int, int]],
                bound_ms: float | None = None) -> list[Path]:
    """Write the plots into ``out``; returns their paths (none without samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, latency = sample_latencies(timings)
    if latency.size == 0:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(latency, bins=min(100, max(10, latency.size // 20)), color="#4c72b0")
    for q, style in ((50, ":"), (90, "--"), (99, "-")):
        value = np.percentile(latency, q)
        ax.axvline(value, color="#c44e52", linestyle=style, label=f"p{q} {value:.2f} ms")
    if bound_ms is not None:
        ax.axvline(bound_ms, color="black", linewidth=2, label=f"bound {bound_ms:g} ms")
    ax.set_xlabel("latency per sample (ms)")
    ax.set_ylabel("samples")
    ax.set_title(f"DLRM {scenario}: latency distribution ({latency.size:,} samples)")
    ax.legend()
    fig.tight_layout()
    path = out / "latency_histogram.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    if scenario == "Server":
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(done, latency, ".", markersize=2, alpha=0.5, color="#4c72b0")
        if bound_ms is not None:
            ax.axhline(bound_ms, color="black", linewidth=2, label=f"bound {bound_ms:g} ms")
            ax.legend()
        ax.set_xlabel("time since the first query (s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title("DLRM Server: latency over time")
        fig.tight_layout()
        path = out / "latency_over_time.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
