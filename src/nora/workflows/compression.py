"""``nora compress`` and ``nora profile``: the search and the roofline measurement as result objects
for the report writer."""

from __future__ import annotations

from pathlib import Path

from nora.workflows.results import CompressResult, ProfileResult


def compress(checkpoint: str, out_dir: str | Path | None = None, **options) -> CompressResult:
    """Run (or continue) a search and retrain its choice (``nora.compress.workflow.compress``)."""
    from nora.compress import workflow

    data = workflow.compress(checkpoint, out_dir, **options)
    return CompressResult(Path(data["out"]), data)


def resume(out_dir: str | Path, **options) -> CompressResult:
    """Continue a search folder (``nora.compress.workflow.resume``)."""
    from nora.compress import workflow

    data = workflow.resume(out_dir, **options)
    return CompressResult(Path(data["out"]), data)


def profile(model: str | None = None, **options) -> ProfileResult:
    """The host roofline and every layer of a model on it (``nora.perf.profile.profile``)."""
    from nora.perf.profile import profile as measure

    measured, out = measure(model, **options)
    return ProfileResult(out, measured)
