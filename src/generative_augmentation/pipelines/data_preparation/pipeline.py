"""The data_preparation pipeline."""

from kedro.pipeline import Pipeline, node

from .nodes import assign_splits, audit_leakage, decode_images, select_classes, write_working_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(select_classes, ["raw_images", "params:dataset"], "selected_records", name="select_classes"),
            node(
                decode_images,
                ["raw_images", "selected_records", "params:image"],
                ["decoded_records", "decoded_arrays", "undecodable_images"],
                name="decode_images",
            ),
            node(
                assign_splits,
                ["decoded_records", "params:split", "params:seed"],
                "candidate_manifest",
                name="assign_splits",
            ),
            node(
                audit_leakage,
                ["candidate_manifest", "undecodable_images", "params:split"],
                ["manifest", "split_audit", "skipped_images"],
                name="audit_leakage",
            ),
            node(write_working_images, ["manifest", "decoded_arrays"], "real_images", name="write_working_images"),
        ],
        namespace="data_preparation",  # nodes become data_preparation.<name>; kedro-viz draws them as one box
        prefix_datasets_with_namespace=False,  # the datasets and parameters keep their names
    )
