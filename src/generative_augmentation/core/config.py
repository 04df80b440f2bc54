"""Settings parsed once, at the boundary, into frozen dataclasses that hold every default and every check.

A settings class subclasses :class:`Config`. Its fields are typed; ``Config.parse(values, where)`` builds it from a
plain mapping (a Kedro parameters block, a JSON header) and refuses what does not fit, naming the full parameter:

    >>> TrainingSettings.parse({"steps": "many"}, "classifier")
    ConfigError: Parameter classifier.steps must be an integer, got 'many'

* a key the class does not have is refused, with the known keys listed;
* a field without a default is required;
* values are converted by the field's annotation: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` choices,
  ``tuple[X, ...]``, ``list[X]``, ``dict[str, X]``, ``X | None`` and nested ``Config`` classes (parsed under
  ``where.field``); a bool is never taken for a number, and an int is accepted where a float is expected;
* ``checks()`` yields ``(field, ok, message)`` triples for rules across values, run after conversion.

``config.to_dict()`` gives JSON-ready values, and ``config.parameter("field")`` the field's full parameter name,
for messages raised later (a checkpoint made with another value, say). Generic machinery rather than pydantic:
it is a hundred lines, and it keeps the project's dependency pins as they are.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal, Self, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A parameter is missing, unknown or out of range; the message names it in full."""


class _FailedChecksError(ConfigError):
    def __init__(self, failed: list[tuple[str, str]], prefix: str) -> None:
        self.failed = failed
        super().__init__(_failure_message(failed, prefix))


def _failure_message(failed: list[tuple[str, str]], prefix: str) -> str:
    return "Parameter " + "; ".join(f"{_join(prefix, name)} {message}" for name, message in failed)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class of the project's settings dataclasses (subclasses are frozen dataclasses too)."""

    where: ClassVar[str] = ""  # the default parameter prefix of the class, for configs built in code

    def __post_init__(self) -> None:
        failed = [(name, message) for name, ok, message in self.checks() if not ok]
        if failed:
            raise _FailedChecksError(failed, self._prefix())

    def checks(self) -> Iterator[tuple[str, bool, str]]:
        """Rules across values: ``(field, ok, message)``; the message reads after the parameter's name."""
        return iter(())

    def at_least(self, *names: str, minimum: float = 1) -> Iterator[tuple[str, bool, str]]:
        """Checks that each field named is at least ``minimum`` (null allowed where the field allows it)."""
        for name in names:
            value = getattr(self, name)
            yield name, value is None or value >= minimum, f"must be at least {minimum}, got {value}"

    def positive(self, *names: str) -> Iterator[tuple[str, bool, str]]:
        """Checks that each field named is above zero."""
        for name in names:
            value = getattr(self, name)
            yield name, value > 0, f"must be positive, got {value}"

    def within(self, name: str, low: float, high: float, open_low: bool = False, open_high: bool = False):
        """Checks that a field lies in [low, high] (either end open when asked; null allowed where allowed)."""
        value = getattr(self, name)
        above = value is None or (value > low if open_low else value >= low)
        below = value is None or (value < high if open_high else value <= high)
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        yield name, above and below, f"must be in {interval}, got {value}"

    @classmethod
    def parse(cls, values: Mapping[str, Any] | None, where: str | None = None, base: Self | None = None) -> Self:
        """Build the settings from ``values``; missing keys take ``base``'s values (or the defaults)."""
        where = cls.where if where is None else where
        values = _as_mapping(values, where)
        hints = get_type_hints(cls)
        fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            names = ", ".join(_join(where, name) for name in unknown)
            raise ConfigError(f"Unknown parameter(s) {names}; known: {sorted(fields)}")
        converted = {}
        for name, field in fields.items():
            parameter = _join(where, name)
            if name in values:
                converted[name] = _convert(values[name], hints[name], parameter)
            elif base is not None:
                converted[name] = getattr(base, name)
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"Parameter {parameter} is required")
        try:
            instance = cls(**converted)
        except _FailedChecksError as error:
            raise ConfigError(_failure_message(error.failed, where)) from None
        object.__setattr__(instance, "_where", where)
        return instance

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (and checked), keeping the parameter prefix."""
        instance = dataclasses.replace(self, **changes)
        object.__setattr__(instance, "_where", self._prefix())
        return instance

    def to_dict(self) -> dict[str, Any]:
        """The values as plain JSON types (tuples become lists, nested settings dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def parameter(self, name: str) -> str:
        """The full parameter name of field ``name`` (``generation.ddpm.learning_rate``)."""
        return _join(self._prefix(), name)

    def _prefix(self) -> str:
        return getattr(self, "_where", None) or type(self).where


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _as_mapping(values: Any, where: str) -> Mapping[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"Parameter {where or 'block'} must be a mapping of settings, got {values!r}")
    return values


def _convert(value: Any, annotation: Any, parameter: str) -> Any:  # noqa: PLR0911 - one return per kind of annotation
    """``value`` as ``annotation`` describes it, or a ConfigError naming ``parameter``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, parameter)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"Parameter {parameter} does not fit: {'; '.join(errors)}")
    if origin is Literal:
        is_bool_choice = any(isinstance(arg, bool) for arg in args)
        if (isinstance(value, bool) and not is_bool_choice) or value not in args:
            raise ConfigError(f"Parameter {parameter} must be one of {list(args)}, got {value!r}")
        return value
    if isinstance(annotation, type) and issubclass(annotation, Config):
        return annotation.parse(value, parameter)
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"Parameter {parameter} must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(element, item, f"{parameter}[{index}]") for index, element in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"Parameter {parameter} must be a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {str(key): _convert(element, item, f"{parameter}.{key}") for key, element in value.items()}
    return _scalar(value, annotation, parameter)


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _scalar(value: Any, annotation: Any, parameter: str) -> Any:
    if annotation is Any:
        return value
    if value is None and annotation in _EXPECTED:  # `key:` in YAML, or `--params=key=` on the command line
        raise ConfigError(f"Parameter {parameter} is empty (null); give {_EXPECTED[annotation]}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"Parameter {parameter} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"Parameter {parameter} must be an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"Parameter {parameter} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"Parameter {parameter} must be a string, got {value!r}")
        return value
    raise TypeError(f"Unsupported settings annotation {annotation!r} for {parameter}")
