"""Real images in: manifest, patient-grouped split, leakage audit."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
