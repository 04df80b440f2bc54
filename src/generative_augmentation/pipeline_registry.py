"""Project pipelines: each `pipelines/<name>` folder is one pipeline; `__default__` runs them in order."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

PIPELINE_ORDER = (
    "data_preparation",
    "feature_clustering",
    "generation",
    "pseudo_labeling",
    "reduction",
    "hybrid_assembly",
    "evaluation",
)


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline by its folder name, and their sum as the default."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in PIPELINE_ORDER if name in pipelines), start=Pipeline([])
    )
    return pipelines
