"""Settings parsed once into frozen dataclasses: conversion, defaults, and errors that name the parameter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from generative_augmentation.core.config import Config, ConfigError


@dataclass(frozen=True)
class Inner(Config):
    where = "outer.inner"
    rate: float = 0.5
    mode: Literal["a", "b"] = "a"

    def checks(self):
        yield "rate", 0 <= self.rate <= 1, f"must be in [0, 1], got {self.rate}"


@dataclass(frozen=True)
class Outer(Config):
    where = "outer"
    name: str
    steps: int = 10
    widths: tuple[int, ...] = (1, 2)
    classes: list[str] | None = None
    inner: Inner = field(default_factory=Inner)
    switch: bool | Literal["auto"] = "auto"


def test_values_are_converted_by_their_annotation_and_defaults_fill_the_rest() -> None:
    config = Outer.parse({"name": "x", "widths": [3, 4], "inner": {"rate": 1}, "switch": False})
    assert config == Outer(name="x", steps=10, widths=(3, 4), inner=Inner(rate=1.0), switch=False)
    assert isinstance(config.inner.rate, float) and config.classes is None
    assert config.to_dict() == {
        "name": "x",
        "steps": 10,
        "widths": [3, 4],
        "classes": None,
        "inner": {"rate": 1.0, "mode": "a"},
        "switch": False,
    }
    assert Outer.parse(config.to_dict()) == config


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, r"Parameter outer.name is required"),
        ({"name": "x", "step": 3}, r"Unknown parameter\(s\) outer.step; known: \["),
        ({"name": "x", "steps": "many"}, r"outer.steps must be an integer, got 'many'"),
        ({"name": "x", "steps": True}, r"outer.steps must be an integer, got True"),
        ({"name": "x", "steps": 2.5}, r"outer.steps must be an integer, got 2.5"),
        ({"name": "x", "widths": 3}, r"outer.widths must be a list, got 3"),
        ({"name": "x", "widths": [1, "b"]}, r"outer.widths\[1\] must be an integer, got 'b'"),
        ({"name": "x", "inner": {"rate": 2}}, r"Parameter outer.inner.rate must be in \[0, 1\], got 2.0"),
        ({"name": "x", "inner": {"mode": "c"}}, r"outer.inner.mode must be one of \['a', 'b'\], got 'c'"),
        ({"name": "x", "inner": {"extra": 1}}, r"Unknown parameter\(s\) outer.inner.extra"),
        ({"name": "x", "inner": 3}, r"outer.inner must be a mapping of settings, got 3"),
        ({"name": "x", "switch": "sometimes"}, r"outer.switch"),
        ({"name": "x", "steps": None}, r"Parameter outer.steps is empty \(null\); give an integer"),
        ({"name": None}, r"Parameter outer.name is empty \(null\); give a string"),
        ({"name": "x", "inner": {"rate": None}}, r"Parameter outer.inner.rate is empty \(null\); give a number"),
    ],
)
def test_bad_values_are_refused_naming_the_full_parameter(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Outer.parse(values)


def test_a_prefix_given_at_parse_time_names_the_parameter() -> None:
    with pytest.raises(ConfigError, match=r"Parameter pseudo_labeling.labeler.rate must be in"):
        Inner.parse({"rate": -1}, "pseudo_labeling.labeler")
    assert Inner.parse({}, "a.b").parameter("rate") == "a.b.rate"
    assert Inner().parameter("rate") == "outer.inner.rate"


def test_base_supplies_the_missing_values_and_replace_is_checked() -> None:
    base = Inner(rate=0.9, mode="b")
    assert Inner.parse({"rate": 0.1}, "x", base=base) == Inner(rate=0.1, mode="b")
    with pytest.raises(ConfigError, match="rate must be in"):
        base.replace(rate=5.0)
    with pytest.raises(AttributeError):
        base.rate = 0.2  # type: ignore[misc]
