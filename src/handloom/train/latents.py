"""The latent cache: every training image through the VAE once (stage encode_latents), read back by sample key."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from handloom import schema
from handloom.io import atomic_path, read_table, write_json, write_table
from handloom.model.vae import load_autoencoder
from handloom.params import TrainParams
from handloom.shards.reader import image_tensor, iter_samples

LATENTS_FILE = "latents.npy"    # float32 (N, C, h, w), row i is keys.parquet's row i
KEYS_FILE = "keys.parquet"      # KEYS
META_FILE = "meta.json"         # what the cache was made from; a cache that does not match is not used
KEYS = pa.schema([("key", pa.string())])
SPLIT = "train"                 # evaluate encodes its few references on the fly


def vae_content_hash(directory: str | Path) -> str:
    """sha256 over the VAE directory's files: new weights at the same path must not reuse old latents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cache_meta(p: TrainParams) -> dict:
    """The inputs the cached latents are a function of (the posterior mean: no seed)."""
    if p.vae_path is None:
        return {"vae": None}
    return {"vae": vae_content_hash(p.vae_path), "resolution": p.resolution, "latent": "posterior_mean"}


def train_samples(shards_dir: Path, resolution: int) -> tuple[list[str], Iterator[dict]]:
    """The train split's keys in tar order, and its samples in the same order, decoded as the loader decodes."""
    index = read_table(shards_dir / schema.INDEX_FILE).to_pandas()
    index = index[index.split == SPLIT].sort_values(["shard", "offset"])
    min_side = resolution  # min_decode_side of an unaugmented spec: cached latents are of the uncropped image
    samples = (s for shard in index.shard.unique() for s in iter_samples(shards_dir, shard, min_side=min_side))
    return index.key.tolist(), samples


@torch.no_grad()
def encode_latents(shards_dir: Path, out_dir: Path, p: TrainParams, batch_size: int = 32) -> dict:
    """Write the cache for p.vae_path; in pixel space only meta.json, so the stage is a cheap no-op."""
    meta = cache_meta(p)
    out_dir.mkdir(parents=True, exist_ok=True)
    if p.vae_path is not None:
        autoencoder = load_autoencoder(p.vae_path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        autoencoder.to(device)
        keys, samples = train_samples(shards_dir, p.resolution)
        size = autoencoder.geometry.latent_size(p.resolution)
        with atomic_path(out_dir / LATENTS_FILE) as tmp:
            latents = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(keys), autoencoder.geometry.channels,
                                                                        size, size))
            for start in range(0, len(keys), batch_size):
                batch = [next(samples) for _ in range(min(batch_size, len(keys) - start))]
                if [s["key"] for s in batch] != keys[start:start + len(batch)]:
                    raise ValueError(f"{shards_dir}: shards and index disagree near {keys[start]}")
                images = torch.stack([image_tensor(s["image"], p.resolution) for s in batch]).to(device)
                latents[start:start + len(batch)] = autoencoder.encode(images).float().cpu().numpy()
            latents.flush()
            del latents
        write_table(out_dir / KEYS_FILE, pa.table({"key": keys}, schema=KEYS))
        meta["count"] = len(keys)
    write_json(out_dir / META_FILE, meta)  # last: a killed run leaves no meta.json, so no cache is trusted
    return meta


class LatentCache(Mapping):
    """key -> (C, h, w) float32 latent, memory-mapped on first use, so each DataLoader worker maps its own."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._rows: dict[str, int] | None = None
        self._latents: np.ndarray | None = None

    def _open(self) -> None:
        if self._rows is None:
            keys = read_table(self.directory / KEYS_FILE).column("key").to_pylist()
            self._rows = {k: i for i, k in enumerate(keys)}
            self._latents = np.load(self.directory / LATENTS_FILE, mmap_mode="r")

    def __getitem__(self, key: str) -> np.ndarray:
        self._open()
        return np.array(self._latents[self._rows[key]])  # a copy: torch wants writable memory

    def __iter__(self):
        self._open()
        return iter(self._rows)

    def __len__(self) -> int:
        self._open()
        return len(self._rows)

    def __getstate__(self) -> dict:
        return {"directory": self.directory, "_rows": None, "_latents": None}  # workers re-open, never pickle maps


def open_cache(directory: str | Path | None, p: TrainParams) -> LatentCache | None:
    """The cache in `directory` if it was made for p's VAE and resolution; else None (encode on the fly)."""
    if directory is None or p.vae_path is None:
        return None
    meta_path = Path(directory) / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is None or {k: meta.get(k) for k in ("vae", "resolution", "latent")} != cache_meta(p):
        print(f"train: no latent cache for this VAE and resolution in {directory}; encoding on the fly")
        return None
    return LatentCache(directory)
