"""The feature_clustering pipeline: real embeddings, per-class clusters and their t-SNE maps."""

from kedro.pipeline import Pipeline, node

from .nodes import cluster_classes, embed_real_images, plot_cluster_maps


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                embed_real_images,
                ["manifest", "real_images", "params:feature_clustering", "params:image", "params:seed"],
                ["embeddings", "feature_extractor"],
                name="embed_real_images",
            ),
            node(
                cluster_classes,
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
        ]
    )
