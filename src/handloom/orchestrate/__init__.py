"""Prefect orchestration over the DVC pipeline: the stage graph, stage runs through DVC, Dask fan-out."""
