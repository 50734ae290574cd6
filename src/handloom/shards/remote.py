"""Stream shards from `s3://` URLs through fsspec/s3fs: WebDataset's gopen has no S3 opener of its own."""
from __future__ import annotations

import importlib
import os

import fsspec
import pandas as pd
import pyarrow.parquet as pq

SCHEMES = ("s3",)
# `webdataset.gopen` the attribute is the function; the dispatch table lives in the module of that name.
_gopen = importlib.import_module("webdataset.gopen")


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """An open file for `url`. s3fs reads credentials and endpoint as boto does: AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL (for any S3-compatible server), or ~/.aws."""
    return fsspec.open(url, mode, **kw).open()


# botocore's default (3 attempts, ~2 s of backoff) gives up on a server that restarts; s3fs does not retry
# refused connections itself. fsspec's per-protocol defaults reach every S3 client this process makes (loader,
# random access, the index) unless a caller or AWS_MAX_ATTEMPTS says otherwise.
S3_RETRIES = dict(mode="standard", max_attempts=10)  # backoff up to 20 s a try: about a minute in all


def register(schemes: tuple[str, ...] = SCHEMES) -> None:
    """Route these URL schemes through fsspec, for handloom's loader and any `wds.WebDataset(...)` alike."""
    for scheme in schemes:
        _gopen.gopen_schemes[scheme] = gopen_fsspec
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        s3 = fsspec.config.conf.setdefault("s3", {})
        s3.setdefault("config_kwargs", {}).setdefault("retries", S3_RETRIES)


def read_parquet(url: str) -> pd.DataFrame:
    """The index or pairs table beside the shards, local or remote. Through fsspec, not pandas' own route:
    pyarrow's native S3 client rejects the response checksums of some S3-compatible servers (rclone's)."""
    with fsspec.open(url, "rb") as f:
        return pq.read_table(f).to_pandas()


register()  # at import: DataLoader workers that unpickle a pipeline import this module, and register too
