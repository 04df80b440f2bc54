"""The evaluation pipeline: one template per scenario, instantiated with the scenario's namespace."""

from kedro.pipeline import Pipeline, node

from .nodes import score_scenario, train_scenario

SHARED_INPUTS = {"manifest", "real_images"}
SHARED_PARAMETERS = {"params:classifier", "params:evaluation", "params:image"}


def scenario_template(uses_synthetic: bool) -> Pipeline:
    """Train per seed on ``training_manifest``, select on real val, score once on real test."""
    inputs = ["training_manifest", "manifest", "real_images", "params:classifier", "params:evaluation", "params:image"]
    return Pipeline(
        [
            node(
                train_scenario,
                inputs + (["synthetic_images"] if uses_synthetic else []),
                ["classifier", "training_history"],
                name="train_classifier",
            ),
            node(
                score_scenario,
                ["classifier", "manifest", "real_images", "params:image"],
                ["test_scores", "mlflow_metrics", "confusion_matrix", "test_predictions"],
                name="score_on_test",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    scenarios = {"real": False}
    return sum(
        (
            Pipeline(
                scenario_template(uses_synthetic),
                namespace=name,
                inputs=SHARED_INPUTS | ({"synthetic_images"} if uses_synthetic else set()),
                parameters=SHARED_PARAMETERS,
            )
            for name, uses_synthetic in scenarios.items()
        ),
        start=Pipeline([]),
    )
