"""Project settings: configuration loader, context and hooks.

Every study is a Kedro environment (``conf/<env>``) over the dataset-neutral defaults of ``conf/base``; the
embedded RetinaMNIST study is the default one. Parameters merge softly: an environment states only the keys it
changes, and ``--params`` changes the keys it names and nothing else.
"""

from kedro.config import OmegaConfigLoader

from generative_augmentation.hooks import MlflowArtifactHooks, ReproducibilityHooks, RunTimingHooks, ScenarioRunHooks
from generative_augmentation.pipeline_registry import StudyContext
from generative_augmentation.run_safety import (
    MlflowSetupLockHooks,
    MlflowSetupUnlockHooks,
    RunNamingHooks,
    RunSafetyHooks,
)

_SETUP_LOCK, _SAFETY = MlflowSetupLockHooks(), RunSafetyHooks()
HOOKS = (
    _SETUP_LOCK,
    MlflowSetupUnlockHooks(_SETUP_LOCK),
    _SAFETY,
    RunNamingHooks(_SAFETY),
    ReproducibilityHooks(),
    MlflowArtifactHooks(),
    ScenarioRunHooks(),
    RunTimingHooks(),
)

CONTEXT_CLASS = StudyContext
CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "retinamnist",
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
