"""Generators behind one interface; importing this package registers every kind."""

from generative_augmentation.core.generators import (  # noqa: F401 - registers every kind
    ddpm,
    gan,
    per_group,
    progressive_gan,
    stable_diffusion,
)
from generative_augmentation.core.generators.base import (
    GENERATORS,
    SAMPLING_COLUMNS,
    Generator,
    TrainingImages,
    generator_class,
    load_generator,
    register,
)

__all__ = [
    "GENERATORS",
    "SAMPLING_COLUMNS",
    "Generator",
    "TrainingImages",
    "generator_class",
    "load_generator",
    "register",
]
