"""Result objects of the workflows: plain data that the report writer saves and prints.

Each result knows its ``kind``, where it belongs (``out``), the metadata a reader needs (model,
data, samples, noise specification, seed, calibration, repetition cost) and its headline tables.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nora.analysis.curves import Curve
from nora.analysis.walk import WalkResult

Table = tuple[str, list[str], list[list[Any]]]


def _ci(confidence: float) -> str:
    return f"{int(round(confidence * 100))}% CI"


def cost_note(cost: dict[str, Any] | None) -> str:
    """The analog evaluations per sample a repeat policy costs, against one per noisy site."""
    if not cost or cost.get("overhead", 1.0) == 1.0:
        return ""
    return (f"; repeated execution: {cost['evaluations_per_sample']} analog evaluations per sample against "
            f"{cost['baseline_per_sample']} with one per site ({cost['overhead']:.2f}x)")


@dataclasses.dataclass
class EvalResult:
    """Accuracy at each sigma of a list (``nora eval``, the demo, evaluation after training)."""

    out: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    title: str
    confidence: float = 0.95
    kind: str = "eval"

    @property
    def clean(self) -> float:
        return self.meta["clean_accuracy"]

    def tables(self) -> list[Table]:
        head = (f"{self.title}: {self.meta['repeats']} repeats on {self.meta['test_samples']} test samples; clean "
                f"accuracy {self.clean:.4f}, chance {self.meta['chance']:.2f}"
                + cost_note(self.rows[0].get("cost") if self.rows else None))
        timed = any("time_s" in r for r in self.rows)
        columns = (["time (s)"] if timed else []) + ["sigma", "mean acc", "std", f"{_ci(self.confidence)} low", "CI high"]
        return [(head, columns, [([f"{r['time_s']:g}"] if timed else []) +
                                 [r["sigma"], r["mean"], r["std"], r["ci_low"], r["ci_high"]] for r in self.rows])]


@dataclasses.dataclass
class CurveResult:
    """Accuracy-vs-sigma curves with their midpoints, and an optional heat map (``nora curve``)."""

    out: Path
    curves: list[Curve]
    meta: dict[str, Any]
    title: str
    heatmap: dict[str, Any] | None = None
    kind: str = "curve"

    def tables(self) -> list[Table]:
        from nora.report.files import curve_table, midpoint_table

        first = self.curves[0]
        head = (f"{self.title}: {self.meta['repeats']} repeats on {self.meta['test_samples']} test samples; clean "
                f"accuracy {first.clean:.4f}, chance {first.chance:.2f}" + cost_note(self.meta.get("cost")))
        tables = [(head, *curve_table(self.curves)), ("midpoint noise level", *midpoint_table(self.curves))]
        over = self.meta.get("over_seeds")
        if over:
            from nora.report.files import fmt_mu

            tables.append((f"midpoint noise level over {len(over[0]['seeds'])} noise seeds",
                           ["curve", "mu (mean ± std)", "found", "status"],
                           [[o["curve"], fmt_mu(o["mu_mean"], o.get("mu_std")), f"{o['n_found']}/{o['n']}",
                             ", ".join(o["statuses"])] for o in over]))
        return tables


@dataclasses.dataclass
class WalkStudy:
    """Walking Noise over one or more checkpoints and noise seeds (``nora walk``)."""

    out: Path
    runs: list[WalkResult]
    meta: dict[str, Any]
    title: str
    summary: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kind: str = "walk"

    def tables(self) -> list[Table]:
        from nora.report.files import walk_summary, walk_table

        self.summary = self.summary or walk_summary(self.runs)
        first = self.runs[0]
        paths = sorted({s.path for run in self.runs for s in run.sites})
        head = (f"Walking Noise, {self.meta['noise_description']}, {first.mode} ({self.meta['grid']}), "
                f"{len(self.runs)} run(s) x {first.repeats} repeats on {self.meta['test_samples']} test samples; "
                f"clean accuracy {sum(r.clean for r in self.runs) / len(self.runs):.4f}, chance {first.chance:.2f}; "
                f"{sum(r.seconds for r in self.runs):.1f} s; evaluation path: {', '.join(paths)}")
        return [(head, *walk_table(self.summary))]

    def messages(self) -> list[str]:
        return [f"site {row['index']} {row['name']}: {m}" for row in self.summary for m in row["messages"]]


@dataclasses.dataclass
class CompareResult:
    """Robustness of several runs under an inference-sigma distribution (``nora compare``)."""

    out: Path
    table: list[dict[str, Any]]
    curves: dict[str, list[dict[str, Any]]]
    sigmas: list[float]
    meta: dict[str, Any]
    confidence: float = 0.95
    kind: str = "compare"

    def tables(self) -> list[Table]:
        from nora.analysis.robustness import accuracy_matrix

        matrix = accuracy_matrix(list(self.curves.values()))
        return [
            (f"robustness = mean accuracy over {self.meta['distribution']} / clean accuracy "
             f"({self.meta['nodes']} quadrature nodes x {self.meta['repeats']} repeats, {self.meta['noise_description']})",
             ["run", "method", "sigma_train", "clean acc", "mean acc", "robustness %", _ci(self.confidence)],
             [[t["label"], t["method"], f"{t['sigma_train']:g}", t["clean_accuracy"], t["mean_accuracy"],
               f"{100 * t['robustness']:.1f}", _percent_interval(t["robustness_ci"])] for t in self.table]),
            ("accuracy per inference sigma (rows: sigma_train and method; columns: sigma_inf)",
             ["run", "sigma_train", "clean", *(f"{s:g}" for s in self.sigmas)],
             [[t["label"], f"{t['sigma_train']:g}", t["clean_accuracy"], *row] for t, row in zip(self.table, matrix)]),
        ]


def _percent_interval(ci: list[float | None]) -> str:
    if ci[0] is None:
        return "-"
    return f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}"


@dataclasses.dataclass
class TrajectoryResult:
    """Accuracy along a noise trajectory over time (``nora eval --dynamic``)."""

    out: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    title: str
    confidence: float = 0.95
    kind: str = "trajectory"

    def tables(self) -> list[Table]:
        unit = f" ({self.meta['time_unit']})" if self.meta.get("time_unit") else ""
        return [(f"{self.title}: {self.meta['trajectory']}; clean accuracy {self.meta['clean_accuracy']:.4f}",
                 [f"time{unit}", "sigma", "mean acc", "std", f"{_ci(self.confidence)} low", "CI high"],
                 [[f"{r['time']:g}", r["sigma"], r["mean"], r["std"], r["ci_low"], r["ci_high"]] for r in self.rows])]


@dataclasses.dataclass
class UncertaintyResult:
    """Calibration, OOD detection and the entropy split, clean, under shift and under noise
    (``nora uncertainty``); ``per_head``: each member's accuracy when asked for."""

    out: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    title: str
    per_head: list[float] | None = None
    kind: str = "uncertainty"

    def tables(self) -> list[Table]:
        noisy = any(r["kind"] == "noise" for r in self.rows)
        calibration = [("accuracy", "acc"), ("nll", "nll"), ("brier", "brier"), ("ece", "ece"),
                       ("aleatoric", "alea"), ("epistemic", "epi")]
        tables: list[Table] = [(
            f"{self.title}, {self.meta['members']} member(s): calibration and entropy split (nats) on "
            f"{self.meta['test_samples']} test samples" + ("; noisy rows: mean over repeats" if noisy else ""),
            ["name", *[c[1] for c in calibration]],
            [[_uncertainty_label(r), *[r[c[0]] for c in calibration]] for r in self.rows])]
        detection = [("auroc_entropy", "auroc H"), ("auroc_mi", "auroc MI"), ("aupr_mi", "aupr MI"),
                     ("ood_epistemic", "ood epi"), ("flag_auroc", "flag")]
        shown = [r for r in self.rows if "auroc_mi" in r or "flag_auroc" in r]
        if shown:
            tables.append((f"OOD {self.meta['ood'] or '-'}: AUROC/AUPR from entropy H and mutual information MI; "
                           "flag: MI AUROC for the inputs noise breaks", ["name", *[c[1] for c in detection]],
                           [[_uncertainty_label(r), *[r.get(c[0], "") for c in detection]] for r in shown]))
        if self.per_head is not None:
            tables.append(("accuracy of each member", ["head", "accuracy"], list(map(list, enumerate(self.per_head)))))
        return tables

    def messages(self) -> list[str]:
        if self.meta["members"] == 1:
            return ["single-head model: the epistemic part (mutual information) is zero by construction"]
        return []


def _uncertainty_label(row: dict[str, Any]) -> str:
    if row["kind"] == "noise":
        return f"{row['condition']} {row['sigma']:g}"
    return f"{row['condition']} {row['severity']}" if row["kind"] == "shift" else row["condition"]


@dataclasses.dataclass
class CompressResult:
    """A finished compression search (``nora compress``): the chosen policy, retrained and timed,
    and every evaluated policy; ``data`` is what ``nora.compress.workflow`` returns."""

    out: Path
    data: dict[str, Any]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = "compress"

    def tables(self) -> list[Table]:
        final, s = self.data["final"], self.data["settings"]
        return [(f"chosen policy (episode {final['episode']}) of {self.data['episodes']} ({s['agent']}, {s['mode']}, "
                 f"latency on {s['backend']})",
                 ["layer", "kind", "channels", "after", "sparsity", "w bits", "a bits", "kernel", "us"],
                 [[r["layer"], r["kind"], r["channels"], r["after"], r["sparsity"], r["w_bits"], r["a_bits"],
                   r["kernel"], f"{r['latency_us']:.1f}"] for r in self.data["policy"]])]


@dataclasses.dataclass
class ProfileResult:
    """The host roofline and every layer on it (``nora profile``); ``profile`` is a
    ``nora.perf.profile.Profile``."""

    out: Path
    profile: Any
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = "profile"

    def tables(self) -> list[Table]:
        roof, layers = self.profile.data["roofline"], self.profile.data["layers"]
        return [
            ("read bandwidth, one thread (median over each level's working sets)", ["level", "size", "GB/s"],
             [[name, f"{size // 1024} KiB", f"{roof['bandwidth'].get(name, 0) / 1e9:.1f}"] for name, size in roof["levels"]]
             + [["memory", "-", f"{roof['bandwidth'].get('memory', 0) / 1e9:.1f}"]]),
            ("per-layer latency (batch 1, one thread) and the bound that explains it",
             ["backend", "bits", "name", "kernel", "us", "cv", "FLOP/B", "GFLOP/s", "fits in", "bound", "of roof"],
             [[r["backend"], r["bits"], r["name"], r["kernel"], f"{r['latency_s'] * 1e6:.1f}", f"{r['cv']:.2f}",
               f"{r['intensity']:.1f}", f"{r['achieved'] / 1e9:.2f}", r["level"], r["bound"],
               f"{r['share_of_roof']:.0%}"] for r in layers]),
        ]
