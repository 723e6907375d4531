"""Datasets as whole in-memory tensors, and a fast seeded batch loader over them.

``load_dataset(name, split)`` returns an ``ArrayDataset``; ``make_loader`` batches it. ``digits`` is
embedded; the others read the official files from a data root (see ``registry``) and can download them.
"""

from nora.data.arrays import ArrayDataset, BatchLoader, make_loader
from nora.data.registry import (
    DATASETS,
    DEFAULT_DATASET,
    DatasetSpec,
    dataset_info,
    load_dataset,
    resolve_root,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "ArrayDataset",
    "BatchLoader",
    "DatasetSpec",
    "dataset_info",
    "load_dataset",
    "make_loader",
    "resolve_root",
]
