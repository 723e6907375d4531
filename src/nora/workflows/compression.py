"""``nora compress``: the search of ``nora.compress.workflow`` as a result object for the report writer."""

from __future__ import annotations

from pathlib import Path

from nora.workflows.results import CompressResult


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
