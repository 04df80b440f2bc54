"""The hybrid_assembly pipeline."""

from kedro.pipeline import Pipeline, node

from .nodes import real_training_rows


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([node(real_training_rows, "manifest", "real.training_manifest", name="assemble_real")])
