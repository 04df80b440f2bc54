"""The reduction pipeline: t-SNE based selection in the dominant classes, and its maps."""

from kedro.pipeline import Pipeline, node

from .nodes import plot_selection, select_dominant_subsets


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                select_dominant_subsets,
                ["manifest", "embeddings", "params:reduction", "params:seed"],
                ["selected_images", "reduction_summary", "reduction_metrics"],
                name="select_representatives",
            ),
            node(plot_selection, "selected_images", "reduction_maps", name="plot_selection"),
        ],
        namespace="reduction",  # nodes become reduction.<name>; kedro-viz draws them as one box
        prefix_datasets_with_namespace=False,  # the datasets and parameters keep their names
    )
