"""The process pool of the CPU backends (MediaPipe, GrabCut), opened once per stage run and shared by every chunk."""
from __future__ import annotations

import multiprocessing as mp
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm

from handloom.chunks import pool_size

_shared: dict | None = None  # {"size", "pool"} while a worker_pool() block is open; the pool starts on first use


def _spawn_pool(size: int):
    # spawn, not fork: a forked MediaPipe graph (or torch) from the parent can deadlock the child.
    return mp.get_context("spawn").Pool(size)


@contextmanager
def worker_pool(workers: int | None) -> Iterator[None]:
    """Every pmap for this many workers inside the block reuses one pool: a worker takes seconds to start
    (imports, MediaPipe's graph), which a pool per chunk would pay again and again. It starts only when a
    pmap needs it, so a rerun that finds everything cached starts none."""
    global _shared
    if _shared is not None:
        yield
        return
    _shared = dict(size=pool_size(workers), pool=None)
    try:
        yield
    finally:
        if _shared["pool"] is not None:
            _shared["pool"].terminate()
        _shared = None


def pmap(fn: Callable, items: list, workers: int | None, desc: str) -> list:
    """fn over items in input order: in-process for one worker, else in the shared pool or a pool of its own.
    fn must pickle (a module-level function or a partial of one)."""
    size = pool_size(workers)
    n = min(size, max(len(items), 1))
    bar = dict(total=len(items), desc=desc, unit="img", leave=False)
    if n == 1:
        return [fn(x) for x in tqdm(items, **bar)]
    chunksize = max(1, min(16, len(items) // (4 * n)))
    if _shared is not None and _shared["size"] == size:
        _shared["pool"] = _shared["pool"] or _spawn_pool(size)
        return list(tqdm(_shared["pool"].imap(fn, items, chunksize), **bar))
    with _spawn_pool(n) as pool:
        return list(tqdm(pool.imap(fn, items, chunksize), **bar))
