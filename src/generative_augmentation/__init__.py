"""Generative data augmentation for small, imbalanced medical image classification sets."""

__version__ = "0.1.0"
