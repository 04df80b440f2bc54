"""Select a representative subset of each dominant class's real train images (t-SNE + KMeans)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
