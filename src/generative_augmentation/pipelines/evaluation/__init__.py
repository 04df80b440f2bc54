"""Train a classifier per scenario and seed, score it once on the real test split, report."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
