"""Choose the image-to-image (SDEdit) strength and guidance of the pixel DDPM on VALIDATION images.

For every (strength, guidance) pair, the trained generator of a finished run makes variations of the real train
images of each generated class (the plan `kedro run` would make, ``--multiple`` x each class's train count), and
each class's variations are scored against that class's real validation images: KID and k-NN precision / recall on
the offline EfficientNet-Lite0 features (``core.generative_metrics``, the evaluation's quality settings). Real
train images against the same validation images are the floor. Test images are never read.

Usage (from the project root, after a run has trained a generator; add --env for another study):

    .venv/bin/python scripts/variation_sweep.py --strengths 0.25 0.5 0.75 1.0 --guidance 1 2

It prints one Markdown table (every setting and class) and the chosen setting: the highest mean k-NN recall over
the classes among the settings whose KID is within 2x the real-train floor in every class (else among all), ties
to the lower mean KID. Results also go to ``<data_dir>/08_reporting/variation_sweep.csv``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from study_tables import markdown  # noqa: E402


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--multiple", type=float, default=1.0, help="variations per class x its train count")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from generative_augmentation.core.features import EfficientNetLite0Extractor
    from generative_augmentation.core.generation import GenerationConfig, plan_pool
    from generative_augmentation.core.generative_metrics import QualityConfig, quality_row
    from generative_augmentation.core.images import ImageSpec, stack_images
    from generative_augmentation.core.runtime import derive_seed

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        context = session.load_context()
        catalog, parameters = context.catalog, context.params
        manifest, real_images = catalog.load("manifest"), catalog.load("real_images")
        clusters = catalog.load("clusters") if catalog.exists("clusters") else None
        generator = catalog.load("generator")
        data_dir = Path(context.config_loader["globals"]["data_dir"])
    image, seed = ImageSpec.parse(parameters["image"]), int(parameters["seed"])
    quality = QualityConfig.parse(parameters["evaluation"].get("quality"))
    extractor = EfficientNetLite0Extractor(image_size=quality.image_size)

    def features(partitions, keys) -> np.ndarray:
        return extractor.embed(stack_images(partitions, keys, image), progress=False)

    rows = []
    base = dict(parameters["generation"])
    for strength, guidance in itertools.product(args.strengths, args.guidance):
        sampling = {**base["ddpm"]["sampling"], "mode": "image_to_image", "strength": strength}
        sampling["guidance_scale"] = guidance
        config = GenerationConfig.parse(
            {**base, "ddpm": {**base["ddpm"], "sampling": sampling}, "pool": {"multiple": args.multiple}}
        )
        generator.settings = config.settings
        _, plan = plan_pool(manifest, clusters, config, derive_seed(seed, "variation_sweep"))
        started = time.perf_counter()
        images = generator.generate(plan, stack_images(real_images, plan["source_image_key"], image), progress=False)
        seconds = time.perf_counter() - started
        for class_name in sorted(plan["intended_class"].unique()):
            of_class = manifest[manifest["class_name"] == class_name]
            reference = features(real_images, of_class.loc[of_class["split"] == "val", "image_key"])
            fake = extractor.embed(images[(plan["intended_class"] == class_name).to_numpy()], progress=False)
            rows.append(
                {
                    "strength": strength,
                    "guidance": guidance,
                    "class_name": class_name,
                    "images_per_s": len(plan) / seconds,
                }
                | quality_row(reference, fake, quality, seed)
            )
        print(f"strength {strength:g}, guidance {guidance:g}: {len(plan)} images in {seconds:.0f} s", flush=True)
    for class_name in sorted({row["class_name"] for row in rows}):
        of_class = manifest[manifest["class_name"] == class_name]
        reference = features(real_images, of_class.loc[of_class["split"] == "val", "image_key"])
        train = features(real_images, of_class.loc[of_class["split"] == "train", "image_key"])
        rows.append(
            {"strength": "real_train", "guidance": "", "class_name": class_name}
            | quality_row(reference, train, quality, seed)
        )
    table = pd.DataFrame(rows)
    output = data_dir / "08_reporting" / "variation_sweep.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    print(markdown(table.round(4)))
    print("\nChosen on validation:", choose(table))


def choose(table: pd.DataFrame) -> str:
    """The highest mean recall among settings whose KID is within 2x the real-train floor in every class."""
    floor = table[table["strength"] == "real_train"].set_index("class_name")["kid"].clip(lower=1e-4)
    settings = table[table["strength"] != "real_train"].copy()
    settings["within_2x"] = settings["kid"] <= 2 * settings["class_name"].map(floor)
    summary = settings.groupby(["strength", "guidance"]).agg(
        recall=("recall", "mean"), min_recall=("recall", "min"), kid=("kid", "mean"), within=("within_2x", "all")
    )
    pool = summary[summary["within"]] if summary["within"].any() else summary
    best = pool.sort_values(["recall", "kid"], ascending=[False, True]).iloc[0]
    strength, guidance = best.name
    return (
        f"strength {strength}, guidance {guidance}: mean recall {best['recall']:.3f} (min {best['min_recall']:.3f}), "
        f"mean KID {best['kid']:.4f}; KID within 2x the floor in every class: {bool(best['within'])}"
    )


if __name__ == "__main__":
    main()
