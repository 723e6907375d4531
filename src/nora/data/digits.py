"""scikit-learn's 8x8 digits: shipped inside scikit-learn, so nora runs with no data on disk."""

from __future__ import annotations

import numpy as np

from nora.data.arrays import ArrayDataset

TEST_FRACTION = 0.25
SPLIT_SEED = 0


def load_digits_split(split: str) -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return ArrayDataset(x, y, name="digits", class_names=[str(d) for d in range(10)])
