"""Anomaly detection with the MLPerf Tiny autoencoder, quantisation-aware, on real audio; then export.

    python examples/export_autoencoder_fsdd.py --data-root ../shared/data/fsdd [--anomaly digit:9] [--epochs 20] [--run runs/ae-qat-fsdd]
    nora export --checkpoint runs/ae-qat-fsdd --format qonnx -o ae.onnx
    nora check ae.onnx --against runs/ae-qat-fsdd --random-inputs

The MLPerf data (ToyADMOS machine sounds) is not available here, so this uses the Free Spoken Digit
Dataset the same way: with ``--anomaly digit:9`` (default) spoken digits 0-8 are "normal" and digit 9
is the "anomaly"; with ``--anomaly speaker:NAME`` one speaker's recordings are the anomaly (closer to
ToyADMOS, where an anomalous machine sounds different, not says something else). Features follow the
MLPerf recipe (stacked log-mel frames) with nora's audio front end: every clip brought to 16 kHz and
1 s, 49 frames of 40 ms (20 ms hop), 40 log-mel bands; 16 consecutive frames stacked give one
640-feature vector, taken every 3 frames (12 per clip), standardised per band with training
statistics. The autoencoder (640 -> 4 x 128 -> 8 -> 4 x 128 -> 640, BN, 8-bit weights and ReLUs with
constant scale, 8-bit input) is trained on the normal training clips to reconstruct them (MSE); a
clip's anomaly score is its mean reconstruction error, and the AUC measures how well it separates
the anomalous test clips from the normal ones (official split: takes 0-4 of every speaker and digit
are the test set).

``nora train`` trains classifiers; this reconstruction objective needs its own few-line loop. The
checkpoint is written with ``nora.train.checkpoint.save_model`` so ``nora export``/``nora check`` read it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch
from scipy.fft import rfft
from sklearn.metrics import roc_auc_score

from nora.data.audio import (
    HOP,
    LOG_FLOOR,
    N_FFT,
    WINDOW,
    mel_filterbank,
    read_wav,
    to_clip,
)
from nora.models import build_model
from nora.train.checkpoint import save_model

FRAMES, STRIDE = 16, 3
NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")


def log_mel(clip: np.ndarray) -> np.ndarray:
    """[49 frames, 40 bands] log-mel energies of a 1 s clip (nora.data exposes MFCCs only)."""
    frames = np.lib.stride_tricks.sliding_window_view(clip, WINDOW)[::HOP]
    power = np.abs(rfft(frames * np.hanning(WINDOW + 1)[:-1], n=N_FFT, axis=-1)) ** 2
    return np.log(power @ mel_filterbank() + LOG_FLOOR).astype(np.float32)


def clip_vectors(path: Path) -> np.ndarray:
    """[12, 640]: 16 stacked frames every 3 frames."""
    mel = log_mel(to_clip(*read_wav(path)))
    return np.stack([mel[i : i + FRAMES].reshape(-1) for i in range(0, len(mel) - FRAMES + 1, STRIDE)])


def load(root: Path, anomaly: str):
    """{"train"/"test": (vectors [clips, 12, 640], is_anomaly [clips])} for ``digit:D`` or ``speaker:NAME``."""
    kind, _, value = anomaly.partition(":")
    if kind not in ("digit", "speaker") or not value:
        raise SystemExit(f"--anomaly must be digit:D or speaker:NAME, got {anomaly!r}")
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    parts = {"train": ([], []), "test": ([], [])}
    for path in sorted(folder.glob("*.wav")):
        match = NAME.match(path.name)
        if match:
            digit, speaker, take = match.groups()
            vectors, labels = parts["test" if int(take) < 5 else "train"]
            vectors.append(clip_vectors(path))
            labels.append((digit if kind == "digit" else speaker) == value)
    if not any(parts["test"][1]):
        raise SystemExit(f"no FSDD recordings ('<digit>_<speaker>_<take>.wav') of {anomaly} under {folder}")
    return {k: (np.stack(v), np.array(y)) for k, (v, y) in parts.items()}


def scores(model, clips: torch.Tensor) -> np.ndarray:
    """Mean squared reconstruction error per clip ([clips, vectors, 640] input)."""
    model.eval()
    with torch.no_grad():
        flat = clips.reshape(-1, clips.shape[-1])
        error = (model(flat) - flat).pow(2).mean(dim=1)
    return error.reshape(clips.shape[:2]).mean(dim=1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="FSDD folder (holding recordings/)")
    parser.add_argument("--run", default="runs/ae-qat-fsdd", help="where the checkpoint goes")
    parser.add_argument("--anomaly", default="digit:9", help="digit:D or speaker:NAME (george, jackson, lucas, ...)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than free cores slows it down)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load(Path(args.data_root), args.anomaly)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    normal = train_x[~train_y].reshape(-1, train_x.shape[-1])
    mean, std = normal.mean(axis=0), normal.std(axis=0) + 1e-6
    train_t = torch.from_numpy((normal - mean) / std).float()
    test_t = torch.from_numpy((test_x - mean) / std).float()
    print(f"{len(train_t)} normal training vectors; {len(test_x)} test clips ({int(test_y.sum())} anomalous: {args.anomaly})")

    model = build_model("autoencoder-qat", input_shape=(train_t.shape[1],), bits=8, act_scale=1 / 64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for index in torch.randperm(len(train_t), generator=generator).split(512):
            batch = train_t[index]
            optimizer.zero_grad(set_to_none=True)
            loss = (model(batch) - batch).pow(2).mean()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        schedule.step()
        auc = roc_auc_score(test_y, scores(model, test_t))
        print(f"epoch {epoch + 1:>3}/{args.epochs}  train MSE {total / len(train_t):.4f}  test AUC {auc:.3f}", flush=True)
    save_model(args.run, model, {
        "arch": model.arch, "arch_kwargs": model.arch_kwargs, "input_shape": list(model.input_shape),
        "num_classes": None, "dataset": f"fsdd log-mel 16x40, anomaly {args.anomaly}",
        "epochs_done": args.epochs, "test_auc": auc,
        "feature_mean": mean.tolist(), "feature_std": std.tolist(),
    })
    print(f"test AUC {auc:.3f}; checkpoint {args.run}")


if __name__ == "__main__":
    main()
