"""Prefect entry points for prefect.yaml; the flows live in handloom.orchestrate, where Dask workers can import them."""
from handloom.orchestrate.flows import pipeline

__all__ = ["pipeline"]

if __name__ == "__main__":
    pipeline()
