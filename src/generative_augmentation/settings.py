"""Project settings: config loader and hooks."""

from kedro.config import OmegaConfigLoader

from generative_augmentation.hooks import MlflowArtifactHooks, ReproducibilityHooks, RunTimingHooks, ScenarioRunHooks

HOOKS = (ReproducibilityHooks(), MlflowArtifactHooks(), ScenarioRunHooks(), RunTimingHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
