"""Chunks of records, the unit of work of ingest, annotate and shard: run on a local process pool, or on the Dask
cluster whose scheduler HANDLOOM_DASK_SCHEDULER names, and handed back in chunk order, so neither the engine nor
the number of workers changes a byte of what a stage writes."""
from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

from handloom.logs import progress

T = TypeVar("T")
R = TypeVar("R")

# An address in the environment, not a param: the engine changes no output, so DVC must not see it change.
SCHEDULER_ENV = "HANDLOOM_DASK_SCHEDULER"
WORKERS_ENV = "HANDLOOM_WORKERS"  # local processes where a stage's params do not say (0 or unset: one per core)
CHUNK_ENV = "HANDLOOM_CHUNK_SIZE"  # records per chunk instead of each stage's default (tests, benchmarks)
IN_FLIGHT_PER_WORKER = 2  # chunks submitted ahead per worker: none idles, and memory stays a few chunks' worth


def pool_size(workers: int | None = 0) -> int:
    """0 or None: HANDLOOM_WORKERS, else one worker per core."""
    return workers or int(os.environ.get(WORKERS_ENV) or 0) or os.cpu_count() or 1


def chunk_size(default: int) -> int:
    """Records per chunk: the stage's default unless HANDLOOM_CHUNK_SIZE says otherwise. Like the engine, it
    changes no byte of the outputs: results are merged in key order."""
    return int(os.environ.get(CHUNK_ENV) or 0) or default


def scheduler_address() -> str | None:
    return os.environ.get(SCHEDULER_ENV) or None


def _init_worker() -> None:
    # A chunk's own progress bars, interleaved from every worker, say nothing the stage's bar does not.
    os.environ["TQDM_DISABLE"] = "1"


class _InProcess:
    """The engine for one worker: no process to start, no pickling; a failing chunk raises at once."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through result()
            future.set_exception(e)
        return future

    def workers(self) -> int:
        return 1


class _ProcessPool:
    def __init__(self, size: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked MediaPipe graph, OpenCV or torch thread pool can deadlock the child.
        self.size = size
        self.pool = ProcessPoolExecutor(size, mp_context=mp.get_context("spawn"), initializer=_init_worker)

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def workers(self) -> int:
        return self.size

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class _Dask:
    """An existing Dask cluster: a chunk whose worker dies is run again elsewhere by the scheduler."""

    def __init__(self, address: str):
        from distributed import Client

        self.client = Client(address, set_as_default=False, timeout="60s")
        self._check_dispatch()

    def _check_dispatch(self) -> None:
        """A stage pins CPU dispatch (handloom.cpu) so its bytes are the same on every machine; workers that do not
        would write other bytes than a local run, so they are refused by name."""
        from handloom.cpu import dispatch_pinned

        if not dispatch_pinned():
            return
        unpinned = sorted(w for w, pinned in self.client.run(dispatch_pinned).items() if not pinned)
        if unpinned:
            self.client.close()
            raise RuntimeError(f"Dask workers {', '.join(unpinned)} do not pin CPU dispatch, so they would write other "
                               "bytes than a local run: start them with `python -m handloom.cpu dask worker ...`")

    def submit(self, fn, *args):
        # pure=False: two equal chunks (a rerun) are still two runs; retries on top of the scheduler's own
        # rescheduling of the tasks of a lost worker.
        return self.client.submit(fn, *args, pure=False, retries=2)

    def workers(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def close(self) -> None:
        self.client.close()


@contextmanager
def engine(workers: int | None = 0, n_chunks: int | None = None) -> Iterator:
    """The engine chunks run on: the Dask cluster named in the environment, else `workers` local processes
    (0: one per core), else this process when one would do (one worker, or a single chunk)."""
    address = scheduler_address()
    if address:
        ran = _Dask(address)
    elif pool_size(workers) == 1 or n_chunks == 1:
        ran = _InProcess()
    else:
        ran = _ProcessPool(min(pool_size(workers), n_chunks or pool_size(workers)))
    try:
        yield ran
    finally:
        if hasattr(ran, "close"):
            ran.close()


def map_chunks(fn: Callable[[T], R], chunks: Iterable[T], workers: int | None = 0, desc: str = "",
               unit: str = "img", size: Callable[[T], int] = len, total: int | None = None,
               n_chunks: int | None = None) -> Iterator[R]:
    """fn(chunk) for every chunk, yielded in chunk order while later chunks still run.

    The chunks are drawn lazily and at most IN_FLIGHT_PER_WORKER per worker are submitted ahead of the one
    yielded next, so neither the inputs nor finished results pile up in memory. fn must pickle (a module-level
    function or a partial of one). The progress bar counts `size(chunk)` items as each chunk finishes.
    """
    with engine(workers, n_chunks) as ran, progress(total, desc, unit) as bar:
        window = IN_FLIGHT_PER_WORKER * ran.workers()
        pending: deque = deque()

        def submit(chunk) -> None:
            future, n = ran.submit(fn, chunk), size(chunk)
            future.add_done_callback(lambda f: f.cancelled() or f.exception() or bar.update(n))
            pending.append(future)

        for chunk in chunks:
            submit(chunk)
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def batched(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Lists of n items (the last one shorter), drawn lazily."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
