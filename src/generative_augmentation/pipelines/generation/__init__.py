"""Fit a generator on the real train images and generate a pool of synthetic images for the rarer classes."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
