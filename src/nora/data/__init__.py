"""Datasets as whole in-memory tensors, and a fast seeded batch loader over them.

``load_dataset(name, split)`` returns an ``ArrayDataset``; ``make_loader`` batches it. ``digits`` is
embedded; the others read the official files from a data root (see ``registry``) and can download them;
``arrays`` and ``folder`` read a user's own data (see ``custom``). ``check_fits`` refuses data that does
not fit a model before any work starts.
"""

from nora.data.arrays import ArrayDataset, BatchLoader, make_loader
from nora.data.checks import check_fits
from nora.data.registry import (
    DATA_OPTIONS,
    DATASETS,
    DEFAULT_DATASET,
    DatasetSpec,
    dataset_info,
    load_dataset,
    resolve_root,
)

__all__ = [
    "DATA_OPTIONS",
    "DATASETS",
    "DEFAULT_DATASET",
    "ArrayDataset",
    "BatchLoader",
    "DatasetSpec",
    "check_fits",
    "dataset_info",
    "load_dataset",
    "make_loader",
    "resolve_root",
]
