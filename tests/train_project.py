"""A throwaway DVC-style project (params.yaml + data/shards) for running the real train stage in a subprocess."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from handloom.params import ShardParams
from handloom.shards.writer import write_shards

ROOT = Path(__file__).resolve().parents[1]
# fingers11 and the mask head: every source of randomness a resumed run must replay (mask zeroing included).
TINY_TRAIN = dict(resolution=16, conditioning="fingers11", batch_size=2, warmup_steps=2, accelerator="cpu",
                  log_every_n_steps=1, model=dict(patch_size=4, hidden_size=32, depth=1, num_heads=2, mask_head=True))


def toy_shards(toy_dataset: Path, max_samples: int = 1) -> Path:
    """The toy dataset sharded one sequence per shard: train shards of 1 and 4 samples (uneven on purpose)."""
    out = toy_dataset / "shards"
    write_shards({"toy": (toy_dataset / "ingest" / "toy", toy_dataset / "annotations" / "toy")}, out,
                 ShardParams(crop_size=64, max_samples=max_samples))
    return out


def train_project(path: Path, shards: Path, **train) -> Path:
    (path / "data").mkdir(parents=True)
    shutil.copytree(shards, path / "data" / "shards")
    (path / "params.yaml").write_text(yaml.safe_dump({"train": {**TINY_TRAIN, **train}}))
    return path


def train_stage(project: Path, **kwargs) -> subprocess.Popen:
    """stages/train.py running in `project`, as `dvc repro` would run it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / "train.py")], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
