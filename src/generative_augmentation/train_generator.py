"""Train the generator on several GPUs: the generation pipeline's ``train_generator`` node under ``accelerate launch``.

    accelerate launch --num_processes=4 -m generative_augmentation.train_generator [--env=ENV] [--config=run.yml]
    kedro run --only-missing-outputs [--env=ENV]      # the pool and everything after it, with this generator

Every process opens the project's catalog and runs the same node function as ``kedro run`` does; accelerate (which
every generator trains through) splits each batch over the processes and averages the gradients. The first process
alone saves the generator and its loss log (the loss on its share of each batch) through the catalog, and writes the
checkpoints (they resume as under ``kedro run``, and refuse a changed configuration). The plan (the generator's
training set) is made first when the catalog does not have it. ``--config`` takes a Kedro run file (``run: {env:
..., params: {...}}``), as ``kedro run --config`` does. With one process (plain ``python -m``) it is the node on one
device.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import yaml
from accelerate import PartialState
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.pipeline.node import Node

from generative_augmentation.core.generation import GenerationConfig
from generative_augmentation.core.runtime import pick_device

logger = logging.getLogger("generative_augmentation.train_generator")  # not __main__ under -m

PLAN_NODE, TRAIN_NODE = "generation.plan_generation", "generation.train_generator"


def run_node(node: Node, catalog, save: bool) -> dict[str, Any]:
    """The node on inputs loaded from the catalog; its outputs saved there when ``save``."""
    outputs = node.run({name: catalog.load(name) for name in node.inputs})
    if save:
        for name, data in outputs.items():
            catalog.save(name, data)
    return outputs


def train(project: Path, env: str | None, params: dict[str, Any]) -> None:
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        catalog = session.load_context().catalog
        # The processes' ranks, from accelerate launch / torchrun (one process without them); on the device the
        # generator trains on, as the Accelerator inside the node will be (CPU processes join with gloo).
        device = GenerationConfig.parse(catalog.load("params:generation")).device
        state = PartialState(cpu=pick_device(device).type == "cpu")
        nodes = {node.name: node for node in pipelines["generation"].nodes}
        plan, training = nodes[PLAN_NODE], nodes[TRAIN_NODE]
        if state.is_main_process and not all(catalog.exists(name) for name in plan.outputs):
            logger.info("Planning the pool first (%s)", PLAN_NODE)
            run_node(plan, catalog, save=True)
        state.wait_for_everyone()
        logger.info("Process %d of %d trains the generator", state.process_index + 1, state.num_processes)
        run_node(training, catalog, save=state.is_main_process)
        state.wait_for_everyone()
        if state.is_main_process:
            logger.info("Generator saved; `kedro run --only-missing-outputs` goes on from the pool")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=None, help="the Kedro environment (default: the project's)")
    parser.add_argument("--config", type=Path, default=None, help="a Kedro run file: run: {env: ..., params: {...}}")
    args = parser.parse_args(argv)
    run = yaml.safe_load(args.config.read_text()).get("run", {}) if args.config else {}
    unknown = set(run) - {"env", "params"}
    if unknown:
        raise SystemExit(f"{args.config}: run.{sorted(unknown)[0]} is not read here (only run.env and run.params)")
    train(Path.cwd(), args.env or run.get("env"), run.get("params") or {})


if __name__ == "__main__":
    main()
