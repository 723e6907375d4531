"""Shape checks before any work starts, so a mismatch is one line naming both shapes, not a traceback.

Without them a 28x28 model fed 20x20 data fails inside the first matrix product
("mat1 and mat2 shapes cannot be multiplied"), after a whole epoch when only the test split differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nora.errors import NoraError


def _describe(obj: Any) -> str:
    name = getattr(obj, "name", None)
    source = getattr(obj, "source", None)
    if name and source:
        return f"dataset '{name}' ({source})"
    return f"dataset '{name}'" if name else type(obj).__name__


def check_fits(
    expected_input_shape: Sequence[int] | None,
    expected_classes: int | None,
    dataset: Any,
    what: str,
) -> None:
    """Refuse ``dataset`` (anything with ``input_shape``/``num_classes``: a data set, a stamped model)
    unless its per-sample shape and class count are the expected ones; ``None`` skips that check.

    ``what`` says what is checked against what, e.g. "checkpoint runs/a vs its test data".
    """
    got_shape = getattr(dataset, "input_shape", None)
    got_classes = getattr(dataset, "num_classes", None)
    shape_bad = (expected_input_shape is not None and got_shape is not None
                 and tuple(expected_input_shape) != tuple(got_shape))
    classes_bad = expected_classes is not None and got_classes is not None and int(expected_classes) != int(got_classes)
    if not (shape_bad or classes_bad):
        return
    expected = _shape_text(expected_input_shape, expected_classes)
    got = _shape_text(got_shape, got_classes)
    raise NoraError(f"{what}: expected inputs {expected}, but {_describe(dataset)} has {got}")


def _shape_text(shape: Sequence[int] | None, classes: int | None) -> str:
    dims = "?" if shape is None else "x".join(str(int(d)) for d in shape)
    return f"{dims} with {'?' if classes is None else int(classes)} classes"
