"""Embed the real images, cluster each class, find representatives and flag loose clusters."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
