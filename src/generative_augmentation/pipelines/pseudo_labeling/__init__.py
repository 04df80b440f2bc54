"""Label every synthetic image with a real-trained labeler, guard against copies of real images, filter."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
