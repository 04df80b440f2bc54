"""The generation pipeline: plan the pool, train the generator, generate the pool, report."""

from kedro.pipeline import Pipeline, node

from generative_augmentation.core.runtime import GPU_TAG

from .nodes import generate_synthetic_pool, plan_generation, report_generation, train_generator


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                plan_generation,
                ["manifest", "clusters", "params:generation", "params:seed", "params:study", "params:scenarios"],
                ["generator_training_set", "synthetic_pool_plan"],
                name="plan_generation",
            ),
            node(
                train_generator,
                [
                    "generator_training_set",
                    "manifest",
                    "real_images",
                    "generator_checkpoints",
                    "params:generation",
                    "params:image",
                    "params:seed",
                ],
                ["generator", "generator_training_log"],
                name="train_generator",
                tags=[GPU_TAG],  # the Dask runner sends it to a worker with a GPU when the cluster has one
            ),
            node(
                generate_synthetic_pool,
                ["generator", "synthetic_pool_plan", "real_images", "generator_checkpoints", "params:generation"],
                ["synthetic_images", "synthetic_manifest"],
                name="generate_synthetic_pool",
                tags=[GPU_TAG],
            ),
            node(
                report_generation,
                [
                    "generator",
                    "generator_training_log",
                    "synthetic_manifest",
                    "synthetic_images",
                    "generator_training_set",
                    "real_images",
                    "params:generation",
                ],
                ["generation_sample_grids", "generation_loss_curve", "generation_metrics", "generation_pool_summary"],
                name="report_generation",
            ),
        ],
        namespace="generation",  # nodes become generation.<name>; kedro-viz draws them as one box
        prefix_datasets_with_namespace=False,  # the datasets and parameters keep their names
    )
