"""The pseudo_labeling pipeline: labeler, memorisation guard, filter verdicts, counts and examples."""

from kedro.pipeline import Pipeline, node

from .nodes import (
    apply_filter,
    count_stages,
    find_nearest_real,
    load_synthetic_pool,
    plot_examples,
    predict_labels,
    train_labeler,
    validate_labeler,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                load_synthetic_pool,
                ["synthetic_manifest", "synthetic_images", "manifest", "params:image"],
                "synthetic_arrays",
                name="load_synthetic_pool",
            ),
            node(
                train_labeler,
                [
                    "manifest",
                    "real_images",
                    "params:pseudo_labeling",
                    "params:classifier",
                    "params:image",
                    "params:seed",
                ],
                ["labeler", "labeler_history"],
                name="train_labeler",
            ),
            node(
                validate_labeler,
                ["labeler", "manifest", "real_images", "params:pseudo_labeling", "params:image"],
                "labeler_validation",
                name="validate_labeler",
            ),
            node(
                predict_labels,
                ["synthetic_manifest", "synthetic_arrays", "labeler"],
                "synthetic_predictions",
                name="predict_labels",
            ),
            node(
                find_nearest_real,
                [
                    "synthetic_manifest",
                    "synthetic_arrays",
                    "manifest",
                    "real_images",
                    "embeddings",
                    "feature_extractor",
                    "params:pseudo_labeling",
                    "params:image",
                ],
                ["synthetic_nearest_real", "memorisation_guard"],
                name="find_nearest_real",
            ),
            node(
                apply_filter,
                ["synthetic_manifest", "synthetic_predictions", "synthetic_nearest_real", "params:pseudo_labeling"],
                "labeled_synthetic",
                name="apply_filter",
            ),
            node(
                count_stages,
                ["labeled_synthetic", "manifest", "memorisation_guard", "labeler"],
                ["pseudo_labeling_counts", "pseudo_labeling_metrics"],
                name="count_stages",
            ),
            node(
                plot_examples,
                ["labeled_synthetic", "synthetic_arrays", "params:pseudo_labeling"],
                "pseudo_labeling_examples",
                name="plot_examples",
            ),
        ],
        namespace="pseudo_labeling",  # nodes become pseudo_labeling.<name>; kedro-viz draws them as one box
        prefix_datasets_with_namespace=False,  # the datasets and parameters keep their names
    )
