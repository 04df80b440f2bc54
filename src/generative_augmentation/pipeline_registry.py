"""Project pipelines, built for the active environment's study.

The scenario arms shape two pipelines (one namespaced template per arm), so the registry reads them from the
parameters of the environment being run: :class:`StudyContext` (the project's ``CONTEXT_CLASS``) hands its
configuration loader to :func:`use_configuration` when a session creates it, which drops any pipelines built for
another configuration earlier in the process. Without a session (``kedro registry list``, a notebook that imports
the registry), the configuration is read as a default session would read it: ``KEDRO_ENV`` or the default
environment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kedro.framework.context import KedroContext
from kedro.framework.project import pipelines as project_pipelines
from kedro.framework.project import settings
from kedro.pipeline import Pipeline

from generative_augmentation.core.scenarios import study_scenarios
from generative_augmentation.pipelines import (
    data_preparation,
    evaluation,
    feature_clustering,
    generation,
    hybrid_assembly,
    pseudo_labeling,
    reduction,
)

logger = logging.getLogger(__name__)

PIPELINE_ORDER = (
    "data_preparation",
    "feature_clustering",
    "generation",
    "pseudo_labeling",
    "reduction",
    "hybrid_assembly",
    "evaluation",
)
_session_configuration: dict[str, Any] = {}


class StudyContext(KedroContext):
    """Kedro's context, which also tells the registry whose parameters shape the pipelines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_environment(self.config_loader, self.env)
        use_configuration(self.config_loader)


def check_environment(config_loader: Any, env: str | None) -> None:
    """Refuse an environment without a folder (Kedro would run on base alone, or fail deep in MLflow), and warn
    that conf/local is not read when it holds parameters: this project's default environment is a study."""
    conf = Path(config_loader.conf_source)
    environments = sorted(path.name for path in conf.iterdir() if path.is_dir() and path.name != "base")
    active = env or config_loader.default_run_env
    if active != config_loader.base_env and not (conf / active).is_dir():
        raise ValueError(
            f"Unknown environment {active!r} (--env or KEDRO_ENV): there is no folder {conf / active}. "
            f"Environments: {environments}; copy one to conf/<name> to make your own study"
        )
    local = conf / "local"
    if active != "local" and local.is_dir() and any(local.glob("parameters*")):
        logger.warning(
            "conf/local holds parameter files that this run does not read (environment %r): put lasting changes in "
            "conf/%s/parameters.yml, or pass --params for one run",
            active,
            active,
        )


def use_configuration(config_loader: Any) -> None:
    """Build the pipelines from ``config_loader``'s parameters from now on (a session's, with its ``--env`` and
    ``--params``); pipelines built for another configuration are dropped."""
    _session_configuration["loader"] = config_loader
    project_pipelines.configure(__name__)


def active_parameters() -> dict[str, Any]:
    """The parameters of the session being run, else those a default session would read."""
    loader = _session_configuration.get("loader")
    if loader is None:
        loader = settings.CONFIG_LOADER_CLASS(
            conf_source=str(Path.cwd() / settings.CONF_SOURCE),
            env=os.getenv("KEDRO_ENV"),
            **settings.CONFIG_LOADER_ARGS,
        )
    return dict(loader["parameters"])


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline by name, and their sum in flow order as the default."""
    parameters = active_parameters()
    arms = study_scenarios(parameters.get("study"), parameters.get("scenarios"))
    registered = {
        "data_preparation": data_preparation.create_pipeline(),
        "feature_clustering": feature_clustering.create_pipeline(),
        "generation": generation.create_pipeline(),
        "pseudo_labeling": pseudo_labeling.create_pipeline(),
        "reduction": reduction.create_pipeline(),
        "hybrid_assembly": hybrid_assembly.create_pipeline(arms),
        "evaluation": evaluation.create_pipeline(arms),
    }
    registered["__default__"] = sum((registered[name] for name in PIPELINE_ORDER), start=Pipeline([]))
    return registered
