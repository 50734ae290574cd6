"""Prefect entry points for prefect.yaml; the flows live in handloom.orchestrate so Dask workers can import their tasks."""
from handloom.orchestrate.fanout import annotate_fanout
from handloom.orchestrate.flows import pipeline

__all__ = ["annotate_fanout", "pipeline"]

if __name__ == "__main__":
    pipeline()
