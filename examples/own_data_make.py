"""Write a small data set of your own kind, as arrays and as an image folder, to try ``dataset: arrays``/``folder``.

    python examples/own_data_make.py                # writes runs/own-data/digits16.npz and runs/own-data/digits16-images/
    nora train --config examples/own_data_arrays.yaml
    nora train --config examples/own_data_folder.yaml

The samples are scikit-learn's 1,797 bundled 8x8 digits, enlarged to 16x16 grey uint8 images with the
class names spelled out ("zero" ... "nine"): a shape, label type and layout that no built-in data set
has. Nothing is downloaded, and nothing is written inside the repository except under runs/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SIZE = 16


def make(out: Path) -> tuple[Path, Path]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([
        np.asarray(Image.fromarray((image * (255 / 16)).astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR))
        for image in digits.images
    ])
    labels = np.array([NAMES[t] for t in digits.target])
    out.mkdir(parents=True, exist_ok=True)
    arrays = out / "digits16.npz"
    np.savez_compressed(arrays, x=images, y=labels)  # x: uint8 [N, 16, 16], y: class names
    folder = out / "digits16-images"
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / label / f"{i:04d}.png")
    return arrays, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/own-data"), help="folder to write into")
    arrays, folder = make(parser.parse_args().out)
    print(f"wrote {arrays} and {folder}/<class>/*.png")


if __name__ == "__main__":
    main()
