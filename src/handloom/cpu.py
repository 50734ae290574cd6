"""Pins the CPU code paths numpy, OpenBLAS and OpenCV pick at run time, so data stages write the same bytes on
every x86-64 machine, not only on the one that committed dvc.lock.

numpy and OpenCV dispatch float loops (sin, exp, sums, blurs, resizes) to AVX2 / AVX-512 kernels by CPU, and
OpenBLAS picks a matmul kernel by CPU; their results differ in the last bit, and one flipped pixel changes a JPEG,
a DVC hash and every stage after it. Measured here on the synthetic renderer (2 sequences): numpy without its
AVX-512 targets, or OpenBLAS's Haswell kernel instead of this machine's, each gave other bytes. Each library reads
its variable once, when it loads: `pin_cpu_dispatch()` must run before numpy or cv2 is imported (stages/*.py call it
first), and the process pools a stage spawns inherit it.
"""
from __future__ import annotations

import os
import sys

# Every dispatch target beyond the x86-64 baseline, in numpy 2.4's names (X86_V3, ...) and in the older ones; a name
# numpy does not know, or the CPU lacks, is ignored.
NUMPY_TARGETS = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR AVX AVX2 F16C FMA3 AVX512F AVX512CD AVX512_SKX AVX512_CLX " \
                "AVX512_CNL AVX512_KNL AVX512_KNM"
# OpenCV's: on a machine without AVX-512 it prints one line per AVX-512 name at start-up, harmless.
OPENCV_TARGETS = "AVX,FP16,AVX2,FMA3,AVX512-SKX,AVX512-CLX,AVX512-CNL,AVX512-ICL"

PINNED_ENV = {
    "NPY_DISABLE_CPU_FEATURES": NUMPY_TARGETS,
    "OPENBLAS_CORETYPE": "Nehalem",          # SSE-only kernels: there on every x86-64 machine
    "OPENCV_CPU_DISABLE": OPENCV_TARGETS,
}


def pin_cpu_dispatch() -> None:
    """Set PINNED_ENV for this process and its children; an error if numpy or cv2 was imported without it."""
    loaded = [name for name in ("numpy", "cv2") if name in sys.modules]
    if loaded and any(os.environ.get(k) != v for k, v in PINNED_ENV.items()):
        raise RuntimeError(f"pin_cpu_dispatch() must run before {' and '.join(loaded)} is imported")
    os.environ.update(PINNED_ENV)


def dispatch_pinned() -> bool:
    """Whether this process runs with PINNED_ENV (a Dask worker is asked this before it gets a chunk)."""
    return all(os.environ.get(k) == v for k, v in PINNED_ENV.items())


def main(argv: list[str]) -> None:
    """`python -m handloom.cpu COMMAND ...`: COMMAND with the dispatch pinned from its start, e.g. a Dask worker
    whose chunks must write the bytes a local run writes."""
    if not argv:
        raise SystemExit("usage: python -m handloom.cpu COMMAND [ARGS...]  (e.g. dask worker tcp://host:8786)")
    os.environ.update(PINNED_ENV)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
