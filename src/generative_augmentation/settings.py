"""Project settings: configuration loader, context and hooks.

Every study is a Kedro environment (``conf/<env>``) over the dataset-neutral defaults of ``conf/base``; the
embedded RetinaMNIST study is the default one. Parameters merge softly: an environment states only the keys it
changes, and ``--params`` changes the keys it names and nothing else.
"""

import logging
import re
import warnings

from kedro.config import OmegaConfigLoader

from generative_augmentation.hooks import MlflowArtifactHooks, ReproducibilityHooks, RunTimingHooks, ScenarioRunHooks
from generative_augmentation.pipeline_registry import StudyContext
from generative_augmentation.run_safety import (
    MlflowSetupLockHooks,
    MlflowSetupUnlockHooks,
    RunNamingHooks,
    RunSafetyHooks,
)

# Warnings about library internals that a user of this project cannot act on, silenced by message and by the module
# that raises them. Kedro imports this file before its CLI loads the plugins (kedro-mlflow) and before it creates the
# configuration loader or builds the pipelines, which is where they are raised; none of the imports above raises one.
warnings.filterwarnings(  # OmegaConf, on Kedro's and kedro-mlflow's own resolvers (globals, runtime_params, km.*)
    "ignore",
    message=r"register_new_resolver\(\) is deprecated",
    category=UserWarning,
    module=r"(kedro|kedro_mlflow)\.",
)
warnings.filterwarnings(  # Kedro, on the study nodes that read each scenario namespace's outputs (`real.test_scores`)
    "ignore",
    message=r"One or more dataset names contain '\.' characters",
    category=UserWarning,
    module=r"kedro\.pipeline\.node",
)


class _MlflowTypeHintWarning(logging.Filter):
    """Drops mlflow's "Add type hints to the `predict` method" warning about kedro-mlflow's KedroPipelineModel.

    mlflow raises it inside its own ``catch_warnings()`` with ``simplefilter("once")``, which outranks any warning
    filter, so it is dropped where Kedro's logging receives every warning: the ``py.warnings`` logger.
    """

    pattern = re.compile(
        r"mlflow[\\/]pyfunc[\\/]utils[\\/]data_validation\.py:\d+: UserWarning: (\x1b\[\d+m)?Add type hints"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


logging.getLogger("py.warnings").addFilter(_MlflowTypeHintWarning())

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
    "merge_strategy": {"parameters": "soft", "mlflow": "soft", "globals": "soft"},
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
