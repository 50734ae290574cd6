"""The synthetic ingest stage writes the same bytes whatever SIMD code paths numpy, OpenBLAS and OpenCV would pick
and however many threads they get: the real stage script, run twice in fresh processes, once as on this machine and
once as on an AVX2-only one (numpy without its AVX-512 targets, OpenBLAS's Haswell kernel, 1 thread vs 2)."""
import ast
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# What another machine of this kind would dispatch to: Zen 2 has AVX2 and FMA, no AVX-512.
AVX2_MACHINE = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Haswell",
                "OPENCV_CPU_DISABLE": "AVX512-SKX,AVX512-CLX,AVX512-CNL,AVX512-ICL",
                "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
THIS_MACHINE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def ingest_digests(project: Path, synthetic: dict, env: dict) -> dict[str, str]:
    """sha256 of every file `python stages/ingest.py synthetic` writes in a project holding only params.yaml."""
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"ingest": {"synthetic": synthetic}}))
    clean = {k: v for k, v in os.environ.items() if k not in AVX2_MACHINE} | env
    done = subprocess.run([sys.executable, str(ROOT / "stages" / "ingest.py"), "synthetic"], cwd=project,
                          env=clean | {"PYTHONPATH": str(ROOT / "src"), "TQDM_DISABLE": "1"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = project / "data" / "ingest" / "synthetic"
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def assert_same_bytes(tmp_path: Path, synthetic: dict) -> None:
    here = ingest_digests(tmp_path / "here", synthetic, THIS_MACHINE)
    there = ingest_digests(tmp_path / "there", synthetic, AVX2_MACHINE)
    assert len(here) == 3 and here == there


RENDER = """
import hashlib, sys
from handloom.cpu import pin_cpu_dispatch
if sys.argv[1] == "pinned":
    pin_cpu_dispatch()  # as stages/ingest.py does first
from handloom.datasets.synthetic import render_dataset
if __name__ == "__main__":
    h = hashlib.sha256()
    for f in render_dataset(0, 2, 6, 3, 256, 0.2, workers=int(sys.argv[2])):
        h.update(f.image.tobytes())
    print(h.hexdigest())
"""


def rendered_pixels(tmp_path: Path, pinned: bool, env: dict, workers: int) -> str:
    script = tmp_path / "render.py"
    script.write_text(RENDER)
    clean = {k: v for k, v in os.environ.items() if k not in AVX2_MACHINE} | env
    done = subprocess.run([sys.executable, str(script), "pinned" if pinned else "free", str(workers)],
                          env=clean | {"PYTHONPATH": str(ROOT / "src"), "TQDM_DISABLE": "1"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow  # four renders: ~75 s on 2 cores
def test_rendered_pixels_are_the_same_under_other_simd_dispatch_and_threads(tmp_path):
    """Two 256 px sequences (36 images), in 1 process vs 2. Left free, numpy's AVX-512 loops and OpenBLAS's kernel
    change pixels here (the JPEGs of these 36 happen to absorb it; the default data's did not, see the slow test)."""
    assert rendered_pixels(tmp_path, False, THIS_MACHINE, 1) != rendered_pixels(tmp_path, False, AVX2_MACHINE, 2)
    assert rendered_pixels(tmp_path, True, THIS_MACHINE, 1) == rendered_pixels(tmp_path, True, AVX2_MACHINE, 2)


@pytest.mark.parametrize("stage", ["ingest", "annotate", "shard"])
def test_data_stages_pin_dispatch_before_numpy_loads(stage):
    """The pin only works if numpy and cv2 are not loaded yet: importing the stage script loads neither, and its
    main() pins first."""
    probe = (f"import runpy, sys; runpy.run_path({str(ROOT / 'stages' / f'{stage}.py')!r}); "
             "print(sorted({'numpy', 'cv2'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], env=os.environ | {"PYTHONPATH": str(ROOT / "src")},
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    main = next(n for n in ast.parse((ROOT / "stages" / f"{stage}.py").read_text()).body
                if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert ast.unparse(main.body[0]) == "pin_cpu_dispatch()"


@pytest.mark.slow  # the default data twice: ~5 min on 2 cores
def test_default_synthetic_data_is_the_same_under_other_simd_dispatch_and_threads(tmp_path):
    default = yaml.safe_load((ROOT / "params.yaml").read_text())["ingest"]["synthetic"]
    assert_same_bytes(tmp_path, default)
