"""Project-specific Kedro datasets."""

from generative_augmentation.datasets.generator import GeneratorDataset
from generative_augmentation.datasets.optional import OptionalDataset
from generative_augmentation.datasets.raw_collection import RawCollectionDataset
from generative_augmentation.datasets.safetensors_model import SafetensorsModelDataset
from generative_augmentation.datasets.working_folder import WorkingFolderDataset

__all__ = [
    "GeneratorDataset",
    "OptionalDataset",
    "RawCollectionDataset",
    "SafetensorsModelDataset",
    "WorkingFolderDataset",
]
