"""Scenario training manifests: real, real + synthetic, real + traditional augmentation."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
