"""LoadGen's system under test: batches issued samples, runs the model on worker threads.

The SUT sees the model only as ``predict(dense (P, Nd) float32, sparse (P, F) int32) ->
probabilities (P,) float32``. Each response carries, per pair, the prediction and the label
packed side by side as float32 (the MLPerf reference's layout, which its accuracy script reads).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import mlperf_loadgen as lg
import numpy as np

from dlrmkit.bench.qsl import SampleLibrary
from dlrmkit.progress import Progress, human

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]
RESPONSE_FLOATS = 2  # (prediction, label) per pair
_BYTES = RESPONSE_FLOATS * 4


@dataclass
class Task:
    """Samples from one ``issue_queries`` call (at most max_batchsize of them)."""

    ids: list[int]  # LoadGen response ids
    samples: list[int]  # QSL indices
    issued_ns: int

    def __len__(self) -> int:
        return len(self.ids)


class TaskQueue:
    """FIFO of tasks; ``take`` hands a worker as many whole tasks as fit in one batch."""

    def __init__(self):
        self._tasks: deque[Task] = deque()
        self._cv = threading.Condition()
        self._closed = False

    def put(self, task: Task) -> None:
        with self._cv:
            self._tasks.append(task)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def take(self, limit: int) -> list[Task] | None:
        """Block for a task; add queued ones while the batch stays within ``limit`` samples."""
        with self._cv:
            while not self._tasks and not self._closed:
                self._cv.wait()
            if not self._tasks:
                return None
            batch = [self._tasks.popleft()]
            n = len(batch[0])
            while self._tasks and n + len(self._tasks[0]) <= limit:
                n += len(self._tasks[0])
                batch.append(self._tasks.popleft())
            return batch


@dataclass
class SutStats:
    samples: int = 0
    pairs: int = 0
    batches: int = 0
    # one row per task: (issued_ns, completed_ns, samples), for latency plots
    timings: list[tuple[int, int, int]] = field(default_factory=list)


class SystemUnderTest:
    """Worker threads pull batches of samples, gather their pairs, predict, and respond."""

    def __init__(self, predict: Predict, qsl: SampleLibrary, max_batchsize: int, threads: int,
                 clock: Callable[[], int] = time.perf_counter_ns, progress: Progress | None = None):
        self.predict = predict
        self.qsl = qsl
        self.max_batchsize = max_batchsize
        self.threads = threads
        self.clock = clock
        self.progress = progress
        self.stats = SutStats()
        self.error: str | None = None  # the first failure, with its traceback
        self._queue = TaskQueue()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    # -- LoadGen callbacks ---------------------------------------------------------------------
    def issue_queries(self, query_samples) -> None:
        now = self.clock()
        ids = [q.id for q in query_samples]
        samples = [q.index for q in query_samples]
        step = self.max_batchsize
        for lo in range(0, len(ids), step):
            self._queue.put(Task(ids[lo : lo + step], samples[lo : lo + step], now))

    def flush_queries(self) -> None:
        pass

    # -- workers -------------------------------------------------------------------------------
    def run(self, test: Callable[[], None]) -> None:
        """Serve while ``test`` (LoadGen's StartTest) runs on a helper thread.

        The calling thread is one of the workers. With torch's OpenMP backend the first thread's
        parallel regions run faster than those of threads started later (its team's threads spin
        between regions): on 2 cores a kaggle-shape model served 25% more pairs/s from it.
        """
        failure: list[BaseException] = []

        def drive() -> None:
            try:
                test()
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                failure.append(e)
            finally:
                self._queue.close()

        workers = [threading.Thread(target=self._work, name=f"dlrmkit-sut-{i}", daemon=True)
                   for i in range(1, self.threads)]
        driver = threading.Thread(target=drive, name="dlrmkit-loadgen", daemon=True)
        for thread in (*workers, driver):
            thread.start()
        try:
            self._work()
        except BaseException:
            # e.g. Ctrl-C: LoadGen cannot be stopped and would wait for responses forever; its
            # thread is a daemon, so leave it and let the interrupt end the process
            self._queue.close()
            raise
        self._queue.close()
        for thread in (*workers, driver):
            thread.join()
        if failure:
            raise failure[0]

    def _work(self) -> None:
        while (batch := self._queue.take(self.max_batchsize)) is not None:
            self._run(batch)

    def _run(self, batch: list[Task]) -> None:
        ids = [i for task in batch for i in task.ids]
        samples = np.fromiter((s for task in batch for s in task.samples), dtype=np.int64, count=len(ids))
        out = None
        if self.error is None:
            try:
                out, sizes = self._predict(samples)
            except Exception:  # noqa: BLE001 - any model failure voids the run; reported below
                self._fail(traceback.format_exc())
        if out is None:
            # The run is void. LoadGen waits for every issued sample, so answer without data to
            # let it finish; the harness then raises instead of reporting a result.
            responses = [lg.QuerySampleResponse(i, 0, 0) for i in ids]
        else:
            nbytes = sizes * _BYTES
            addresses = out.ctypes.data + np.cumsum(nbytes) - nbytes
            responses = [lg.QuerySampleResponse(i, a, n)
                         for i, a, n in zip(ids, addresses.tolist(), nbytes.tolist())]
        lg.QuerySamplesComplete(responses)
        done = self.clock()
        with self._lock:
            self.stats.batches += 1
            self.stats.samples += len(ids)
            self.stats.pairs += int(out.shape[0]) if out is not None else 0
            self.stats.timings.extend((task.issued_ns, done, len(task)) for task in batch)
            if self.progress is not None:
                elapsed = max(self.progress.clock() - self.progress.start, 1e-9)
                self.progress.update(len(ids), f"{human(self.stats.pairs / elapsed)} pairs/s")

    def _predict(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dense, sparse, labels, sizes = self.qsl.gather(samples)
        probs = np.asarray(self.predict(dense, sparse))
        if probs.shape != labels.shape:
            raise ValueError(f"the model returned {probs.shape} predictions for {labels.shape[0]} pairs")
        out = np.empty((labels.shape[0], RESPONSE_FLOATS), dtype=np.float32)  # (P, 2)
        out[:, 0] = probs
        out[:, 1] = labels
        return out, sizes

    def _fail(self, message: str) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = message
        print(f"dlrmkit bench: the system under test failed; the run is void "
              f"(LoadGen is finishing its schedule first):\n{message}", file=sys.stderr, flush=True)
