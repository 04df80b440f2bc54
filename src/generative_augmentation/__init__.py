"""Generative data augmentation for small, imbalanced medical image classification sets."""

from generative_augmentation.core.crowding import choose_openmp_wait_policy

# Before anything imports torch: OpenMP reads its wait policy once, when torch loads it (see core/crowding.py).
choose_openmp_wait_policy()

__version__ = "0.1.0"
