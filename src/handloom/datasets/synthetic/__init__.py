"""The embedded default dataset: multi-view sequences of a procedural 3D hand, ray-cast with numpy, exact labels.

hand -> primitives -> raycast -> appearance -> sequences; grid draws what sequences rendered."""
from handloom.datasets.synthetic.sequences import (
    SyntheticFrame,
    render_dataset,
    render_sequence,
)

__all__ = ["SyntheticFrame", "render_dataset", "render_sequence"]
