"""The scenario study's configuration, read once per run so pipelines can be built from parameters.

Kedro builds pipelines after the context exists; ``ReproducibilityHooks.after_context_created`` hands the run's
parameters (with ``--env`` and ``--params`` applied) to :func:`remember_parameters`. Code that builds pipelines
without a session (tests, notebooks) falls back to ``conf/base`` of the current project.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCENARIO_KINDS = ("real", "synthetic", "traditional", "reduced_synthetic", "balanced")
USES_SYNTHETIC = {"synthetic", "reduced_synthetic", "balanced"}
_parameters: dict[str, Any] | None = None


def remember_parameters(parameters: dict[str, Any]) -> None:
    """Keep the active run's parameters for pipeline construction."""
    global _parameters  # noqa: PLW0603 - one run per process; Kedro offers no other channel to the registry
    _parameters = dict(parameters)


def _base_parameters() -> dict[str, Any]:
    from kedro.config import OmegaConfigLoader

    conf = Path.cwd() / "conf"
    if not conf.is_dir():
        return {}
    loader = OmegaConfigLoader(conf_source=str(conf), base_env="base", default_run_env="base")
    return dict(loader["parameters"])


def configured_scenarios(parameters: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{name: spec}`` from ``hybrid_assembly.scenarios``, validated; ``real`` is always present."""
    parameters = parameters if parameters is not None else (_parameters or _base_parameters())
    scenarios = dict((parameters.get("hybrid_assembly") or {}).get("scenarios") or {"real": {"kind": "real"}})
    return {name: validate_scenario(name, dict(spec or {})) for name, spec in scenarios.items()}


def validate_scenario(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Check one scenario's kind and ratio; errors name the scenario and the parameter."""
    where = f"hybrid_assembly.scenarios.{name}"
    if not name.isidentifier():
        raise ValueError(f"Scenario name {name!r} ({where}) must be a Python identifier (use x1p5, not x1.5)")
    kind = spec.get("kind")
    if kind not in SCENARIO_KINDS:
        raise ValueError(f"Unknown scenario kind {kind!r} in {where}.kind; use one of {list(SCENARIO_KINDS)}")
    if kind in {"synthetic", "traditional", "reduced_synthetic"}:
        if "ratio" not in spec:
            raise ValueError(f"{where}.ratio is required for kind {kind!r}")
        if float(spec["ratio"]) < 0:
            raise ValueError(f"{where}.ratio must be at least 0, got {spec['ratio']}")
    return {**spec, "kind": kind, "ratio": float(spec.get("ratio", 0.0))}
