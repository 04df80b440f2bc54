"""The `full` study: the default study repeated over upstream replicates, analysed as one.

Each upstream replicate re-runs every pipeline under its own seed, so the generator, its synthetic pool, the
labeler, the clusters and, where the dataset has no official split (ODIR), the patient split are drawn again; each
arm trains ``--replicates`` classifiers in it. The pooled analysis then resamples upstream replicates, classifier
replicates and test images (``core.study``), so its intervals count the variance of everything upstream, not only
the classifiers' seeds. The pre-registered contrasts are the environment's ``study.statistics``; the best synthetic
arm is chosen on validation macro-F1 averaged over every upstream and classifier replicate.

Usage (from the project root; see docs/results.md for the runs and their cost):

    .venv/bin/python scripts/full_study.py                                   # RetinaMNIST, 3 x 32 classifiers/arm
    .venv/bin/python scripts/full_study.py --env odir5k --upstream 3 --params dataset.root=../shared/data/odir5k_subset

Upstream replicate ``u`` runs with seed ``seed + u`` (``seed`` from the environment) in its own data folder,
``data/full_study/<env>/upstream_<u>``, through a copy of the configuration whose ``data_dir`` points there, and
logs to the MLflow experiment ``<experiment>_full``. A replicate whose outputs exist is not re-run; an interrupted
one resumes with ``--only-missing-outputs``. The pooled tables go to ``data/full_study/<env>/`` (CSV and Markdown),
with each replicate's wall time in ``cost.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from study_tables import primary_table, scenario_table  # noqa: E402


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="retinamnist", help="the study's Kedro environment (default retinamnist)")
    parser.add_argument("--upstream", type=int, default=3, help="upstream replicates (default 3)")
    parser.add_argument("--replicates", type=int, default=32, help="classifiers per arm and upstream (default 32)")
    parser.add_argument("--params", default="", help="extra --params for every run, e.g. dataset.root=PATH")
    parser.add_argument("--combine-only", action="store_true", help="analyse the replicates already run")
    return parser.parse_args()


def session(conf: Path, env: str, extra: dict | None = None):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    return KedroSession.create(project_path=ROOT, env=env, conf_source=str(conf), runtime_params=extra or {})


def parameters_of(env: str) -> dict:
    with session(ROOT / "conf", env) as opened:
        context = opened.load_context()
        return dict(context.config_loader["parameters"]), dict(context.config_loader["globals"])


def upstream_conf(folder: Path, env: str, globals_: dict) -> Path:
    """A copy of conf/base and conf/<env> whose data_dir is ``folder`` and whose experiment is ``<name>_full``."""
    conf = folder / "conf"
    if conf.exists():
        shutil.rmtree(conf)
    shutil.copytree(ROOT / "conf" / "base", conf / "base")
    shutil.copytree(ROOT / "conf" / env, conf / env)
    shutil.copy2(ROOT / "conf" / "logging.yml", conf / "logging.yml")
    overrides = {**globals_, "data_dir": str(folder / "data"), "experiment_name": f"{globals_['experiment_name']}_full"}
    (conf / env / "globals.yml").write_text(yaml.safe_dump(overrides, sort_keys=False))
    return conf


def run_upstream(conf: Path, env: str, seed: int, replicates: int, extra: str) -> float:
    """One whole study under ``seed``; resumes an interrupted one. Returns its wall time in seconds."""
    params = ",".join(part for part in (f"seed={seed}", f"evaluation.replicates={replicates}", extra) if part)
    command = [str(ROOT / ".venv/bin/kedro"), "run", f"--conf-source={conf}", f"--env={env}", f"--params={params}"]
    if (conf.parent / "data").exists():
        command.append("--only-missing-outputs")
    print("$", " ".join(command), flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.monotonic() - started


def pooled(conf_of: dict[int, Path], env: str, arms: list[str]) -> tuple[dict, dict, pd.DataFrame]:
    """Every arm's test predictions and validation histories over the upstream replicates (an ``upstream``
    column), read through each replicate's catalog, and upstream 0's manifest."""
    predictions: dict[str, list[pd.DataFrame]] = {arm: [] for arm in arms}
    histories: dict[str, list[pd.DataFrame]] = {arm: [] for arm in arms}
    manifest = None
    for upstream, conf in conf_of.items():
        with session(conf, env) as opened:
            catalog = opened.load_context().catalog
            for arm in arms:
                predictions[arm].append(catalog.load(f"{arm}.test_predictions").assign(upstream=upstream))
                histories[arm].append(catalog.load(f"{arm}.training_history").assign(upstream=upstream))
            if manifest is None:
                manifest = catalog.load("manifest")
    concat = {arm: pd.concat(frames, ignore_index=True) for arm, frames in predictions.items()}
    return concat, {arm: pd.concat(frames, ignore_index=True) for arm, frames in histories.items()}, manifest


def main() -> None:
    args = arguments()
    from generative_augmentation.core import study
    from generative_augmentation.core.manifest import class_names
    from generative_augmentation.core.runtime import derive_seed
    from generative_augmentation.core.scenarios import StudyConfig, study_scenarios

    parameters, globals_ = parameters_of(args.env)
    base = ROOT / "data" / "full_study" / args.env
    base.mkdir(parents=True, exist_ok=True)
    cost_file = base / "cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    conf_of = {}
    for upstream in range(args.upstream):
        folder = base / f"upstream_{upstream}"
        conf_of[upstream] = upstream_conf(folder, args.env, globals_)
        done = any((folder / "data" / "08_reporting" / "primary_contrasts.csv").glob("*/primary_contrasts.csv"))
        if not args.combine_only and not done:
            seconds = run_upstream(
                conf_of[upstream], args.env, parameters["seed"] + upstream, args.replicates, args.params
            )
            cost[str(upstream)] = {
                "seed": parameters["seed"] + upstream,
                "replicates": args.replicates,
                "seconds": seconds,
            }
            cost_file.write_text(json.dumps(cost, indent=2))

    config = StudyConfig.parse(parameters["study"])
    arms = study_scenarios(parameters["study"], parameters["scenarios"])
    predictions, histories, manifest = pooled(conf_of, args.env, list(arms))
    names = class_names(manifest)
    minority = [names.index(name) for name in config.minority_class_names(manifest)]
    primary, estimates = study.analyse(
        predictions, histories, arms, config.statistics, names, minority, derive_seed(parameters["seed"], "full")
    )
    primary.to_csv(base / "primary_contrasts.csv", index=False)
    estimates.to_csv(base / "scenario_estimates.csv", index=False)
    total = sum(entry["seconds"] for entry in cost.values())
    each = ", ".join(f"{entry['seconds'] / 60:.0f} min" for entry in cost.values())
    summary = (
        f"# Full study: {args.env}, {args.upstream} upstream replicates x {args.replicates} classifiers per arm\n\n"
        f"{primary_table(primary)}\n\n{scenario_table(estimates)}\n\n"
        f"Wall time of the runs: {total / 3600:.2f} h ({each}).\n"
    )
    (base / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
