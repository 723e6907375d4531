"""The tables and the plot of a search (the report writer saves them): the Pareto plot of accuracy vs
latency, the episode table, the policy table."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def pareto_front(episodes: Sequence[dict]) -> list[dict]:
    """Episodes no other episode beats on both accuracy (higher) and latency (lower)."""
    front, best_acc = [], -1.0
    for e in sorted(episodes, key=lambda e: (e["latency_s"], -e["accuracy"])):
        if e["accuracy"] > best_acc:
            front.append(e)
            best_acc = e["accuracy"]
    return front


def episode_rows(episodes: Sequence[dict]) -> list[dict]:
    return [{"episode": e["episode"], "accuracy": e["accuracy"], "latency_s": e["latency_s"],
             "latency_ratio": e["latency_ratio"], "reward": e["reward"], "estimated_layers": e["estimated_layers"]}
            for e in episodes]


def pareto_plot(episodes: Sequence[dict], path: str | Path, *, target: float, reference_accuracy: float,
                chosen: dict | None = None, final: dict | None = None, title: str = "") -> Path:
    from nora.perf.plots import new_axes, save_png

    fig, ax = new_axes((6.4, 4.4))
    ax.scatter([e["latency_ratio"] for e in episodes], [e["accuracy"] for e in episodes], s=10, alpha=0.5,
               label="evaluated policies")
    front = pareto_front(episodes)
    ax.plot([e["latency_ratio"] for e in front], [e["accuracy"] for e in front], "r-", lw=1, label="Pareto front")
    ax.axvline(target, color="k", ls="--", lw=1, label=f"target {target:g}")
    ax.axhline(reference_accuracy, color="grey", ls=":", lw=1, label="uncompressed")
    if chosen is not None:
        ax.scatter([chosen["latency_ratio"]], [chosen["accuracy"]], marker="*", s=120, c="gold", edgecolors="k",
                   zorder=3, label="chosen (before retraining)")
    if final is not None:
        ax.scatter([final["latency_ratio"]], [final["val_accuracy"]], marker="P", s=90, c="green", zorder=3,
                   label="chosen, retrained")
    ax.set_xlabel("latency / uncompressed latency")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "compression policies")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return save_png(fig, path)


def policy_rows(layers: Sequence[dict], record: dict, channels: dict[str, tuple[int, int]],
                latencies: dict[str, tuple[str, float]]) -> list[dict]:
    rows = []
    for layer, p in zip(layers, record["policy"]):
        kernel, seconds = latencies.get(p["name"], ("-", 0.0))
        rows.append({"layer": p["name"], "kind": layer["kind"],
                     "channels": f"{layer['in_channels']}->{layer['out_channels']}",
                     "after": "{}->{}".format(*channels.get(p["name"], (layer["in_channels"], layer["out_channels"]))),
                     "sparsity": p["sparsity"], "w_bits": p["w_bits"], "a_bits": p["a_bits"], "kernel": kernel,
                     "latency_us": seconds * 1e6})
    return rows
