"""The hybrid_assembly node names a bad arm setting by its full parameter path."""

from __future__ import annotations

import pandas as pd
import pytest

from generative_augmentation.core.config import ConfigError
from generative_augmentation.pipelines.hybrid_assembly.nodes import assemble_training_manifest


def test_a_bad_arm_setting_is_named_by_its_arm() -> None:
    with pytest.raises(ConfigError, match=r"scenarios\.synthetic_x1\.synthetic_probability"):
        assemble_training_manifest(
            pd.DataFrame(), {"kind": "synthetic", "synthetic_probability": 1.5}, {}, 0, arm="synthetic_x1"
        )
    with pytest.raises(ConfigError, match=r"scenarios\.synthetic_x1\.kind"):
        assemble_training_manifest(
            pd.DataFrame(),
            {"kind": "count_matched", "controls": "synthetic_x1"},
            {},
            0,
            controlled={"kind": "bogus"},
            arm="count_matched_x1",
            control_arm="synthetic_x1",
        )
