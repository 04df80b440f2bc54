"""Project-specific Kedro datasets."""

from generative_augmentation.datasets.optional import OptionalDataset
from generative_augmentation.datasets.raw_collection import RawCollectionDataset
from generative_augmentation.datasets.safetensors_model import SafetensorsModelDataset

__all__ = ["OptionalDataset", "RawCollectionDataset", "SafetensorsModelDataset"]
