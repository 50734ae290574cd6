"""The chunk engine and the streaming writers: results in chunk order whatever the workers, a dataset written as it
comes in the bytes of one write at the end, and every adapter's output unchanged by the chunk size or worker count."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from handloom import schema
from handloom.chunks import CHUNK_ENV, WORKERS_ENV, batched, map_chunks
from handloom.datasets.ingest import ingest
from handloom.datasets.store import DatasetWriter, read_rejects
from handloom.io import ParquetStream, read_table, write_table
from test_adapters import SAMPLES, sample_params


def square_all(chunk: list[int]) -> list[int]:
    return [x * x for x in chunk]


@pytest.mark.parametrize("workers", [1, 2])
def test_chunks_come_back_in_order_whatever_the_workers(workers):
    chunks = list(batched(range(23), 4))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 3]
    results = list(map_chunks(square_all, iter(chunks), workers, n_chunks=len(chunks)))
    assert [x for r in results for x in r] == [x * x for x in range(23)]


def test_a_parquet_stream_writes_the_bytes_of_one_write(tmp_path):
    rows = [dict(key=f"k{i:04d}", dataset="d", stage="s", reason="r", detail="x" * (i % 7)) for i in range(2500)]
    write_table(tmp_path / "one.parquet", schema.table_from_rows(rows[:900], schema.REJECTS))
    with ParquetStream(tmp_path / "small.parquet", schema.REJECTS) as out:
        for batch in batched(rows[:900], 64):
            out.write_rows(batch)
    assert (tmp_path / "small.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    for name, size in (("a", 7), ("b", 500)):  # the same rows in other batches: the same row groups, the same bytes
        with ParquetStream(tmp_path / f"{name}.parquet", schema.REJECTS) as out:
            for batch in batched(rows, size):
                out.write_rows(batch)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert read_table(tmp_path / "a.parquet").column("key").to_pylist() == [r["key"] for r in rows]
    with pytest.raises(RuntimeError), ParquetStream(tmp_path / "torn.parquet", schema.REJECTS) as out:
        out.write_rows(rows[:10])
        raise RuntimeError("killed")
    assert not list(tmp_path.glob("*torn*"))  # no file, no temp file


def toy_sample(writer, rng, key):
    image = rng.integers(0, 255, (32, 32, 3), np.uint8)
    k = schema.empty_keypoints()
    k[:21, :2], k[:21, 2] = rng.uniform(4, 28, (21, 2)), 1
    writer.add(schema.SampleKey.parse(key), image, k, (0, 0, 32, 32), {"n": key})


def test_a_writer_told_how_far_keys_have_come_writes_as_it_goes_and_the_same_bytes(tmp_path, monkeypatch):
    from handloom.datasets import store

    monkeypatch.setattr(store, "IMAGES_PER_PART", 3)
    keys = [f"d/train/s{i:02d}/0-0" for i in range(8)]
    arrival = [keys[1], keys[0], keys[2], keys[4], keys[3], keys[2], keys[6], keys[5], keys[7]]  # keys[2] twice
    at_once, streamed = (DatasetWriter(tmp_path / name, "d", license="l", source="s") for name in ("a", "b"))
    for writer in (at_once, streamed):
        rng = np.random.default_rng(0)
        for i, key in enumerate(arrival):
            toy_sample(writer, rng, key)
            if writer is streamed and i in (2, 6):
                writer.advance(keys[2] if i == 2 else keys[5])  # no later sample sorts before it
        if writer is streamed:
            assert writer.n_samples == 5 and len(writer._waiting) == 3  # a part written; s05-s07 wait
        writer.write()
    for name in ("manifest.parquet", "rejects.parquet", "images/part-00000.parquet", "images/part-00002.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert list(read_rejects(tmp_path / "b").reason) == [schema.Reject.DUPLICATE_KEY]  # the second keys[2]
    assert read_table(tmp_path / "b" / "manifest.parquet").column("key").to_pylist() == keys


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/hand_samples is not beside the repo")
def test_every_adapter_writes_the_same_bytes_in_any_chunks_on_any_workers(tmp_path, monkeypatch):
    params = sample_params(SAMPLES)
    for name in params:
        ingest(name, params[name], tmp_path / "one" / name)
    monkeypatch.setenv(CHUNK_ENV, "1")
    monkeypatch.setenv(WORKERS_ENV, "2")
    for name in params:
        ingest(name, params[name], tmp_path / "many" / name)
    assert digests(tmp_path / "many") == digests(tmp_path / "one")
