"""The flow's Dask cluster. Ingest, annotate and shard run their chunks on the scheduler that HANDLOOM_DASK_SCHEDULER
names (handloom.chunks), so the flow fans them out by running the very stage commands `dvc repro` runs with that
address in their environment: one implementation, and dvc.lock records the stage as DVC ran it."""
from __future__ import annotations

import os
import threading

from handloom.chunks import SCHEDULER_ENV

# The stages whose commands run chunks (stages/<group>.py); the others ignore the address.
CHUNKED_GROUPS = ("ingest", "annotate", "shard")


def chunked(group: str, cmd: str) -> bool:
    """A stage of dvc.yaml that still runs one of the project's chunked stage scripts."""
    return group in CHUNKED_GROUPS and cmd.startswith(f"python stages/{group}.py")


class DaskCluster:
    """The scheduler the chunked stages get: `address` when given, else a local cluster of single-threaded worker
    processes (each holds one MediaPipe graph; the per-image Python work needs the GIL), started on first use, so a
    run whose stages are all up to date starts none."""

    def __init__(self, address: str | None = None, n_workers: int = 0):
        self._address, self.n_workers = address, n_workers
        self._cluster = None
        self._lock = threading.Lock()

    def address(self) -> str:
        with self._lock:
            if self._address is None:
                from distributed import LocalCluster

                from handloom.cpu import PINNED_ENV

                # The cluster's worker processes start from this environment: pinned, they write a local run's bytes.
                os.environ.update(PINNED_ENV)

                # Loopback only; no per-chunk progress bars from the workers.
                self._cluster = LocalCluster(n_workers=self.n_workers or os.cpu_count(), threads_per_worker=1,
                                             processes=True, host="127.0.0.1", dashboard_address=None,
                                             env={"TQDM_DISABLE": "1"})
                self._address = self._cluster.scheduler_address
            return self._address

    def env(self) -> dict[str, str]:
        return {SCHEDULER_ENV: self.address()}

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster, self._address = None, None
