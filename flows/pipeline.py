"""Prefect entry points for prefect.yaml; the flows live in handloom.orchestrate, where Dask workers can import them.

Run directly, it is `dvc repro [targets]` as Prefect tasks (see README, "Orchestration with Prefect")."""
from handloom.orchestrate.flows import pipeline

__all__ = ["pipeline"]

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", help="DVC stages or foreach groups, with everything upstream "
                        "(default: all of dvc.yaml)")
    pipeline(targets=parser.parse_args().targets or None)
