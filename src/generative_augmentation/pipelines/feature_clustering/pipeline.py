"""The feature_clustering pipeline: real embeddings, per-class clusters and their t-SNE maps."""

from kedro.pipeline import Pipeline, node

from .nodes import cluster_train_images, embed_real_images, plot_cluster_maps


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                embed_real_images,
                [
                    "manifest",
                    "real_images",
                    "params:feature_clustering",
                    "params:classifier",
                    "params:image",
                    "params:seed",
                ],
                ["embeddings", "feature_extractor"],
                name="embed_real_images",
            ),
            node(
                cluster_train_images,
                ["embeddings", "manifest", "params:feature_clustering", "params:seed"],
                ["clusters", "cluster_summary", "feature_clustering_metrics"],
                name="cluster_classes",
            ),
            node(
                plot_cluster_maps,
                ["embeddings", "clusters", "params:feature_clustering", "params:seed"],
                "cluster_maps",
                name="plot_cluster_maps",
            ),
        ],
        namespace="feature_clustering",  # nodes become feature_clustering.<name>; kedro-viz draws them as one box
        prefix_datasets_with_namespace=False,  # the datasets and parameters keep their names
    )
