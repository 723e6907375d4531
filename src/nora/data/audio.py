"""WAV reading and the MFCC front end of the Hello Edge keyword-spotting work (Zhang et al. 2017).

Every clip is brought to 16 kHz and exactly 1 s, then cut into 49 frames of 40 ms with a 20 ms hop;
40 mel filters (20 Hz - 4 kHz), log, DCT-II, first 10 coefficients. One front end for all audio
datasets means models see features of the same shape and scale whatever the source.
"""

from __future__ import annotations

import struct
import wave
from collections.abc import Iterable, Iterator
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
from scipy.fft import dct, rfft
from scipy.signal import firwin, resample_poly

from nora.errors import NoraError

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
WINDOW = 640  # 40 ms
HOP = 320  # 20 ms
N_FFT = 1024
N_MELS = 40
N_MFCC = 10
F_MIN, F_MAX = 20.0, 4000.0
LOG_FLOOR = 1e-6
N_FRAMES = 1 + (CLIP_SAMPLES - WINDOW) // HOP  # 49
_CHUNK = 256  # clips per FFT batch: bounds memory to a few tens of MB


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate, from an integer-PCM wav."""
    try:
        with wave.open(str(path), "rb") as handle:
            channels, width, rate, frames = handle.getnchannels(), handle.getsampwidth(), handle.getframerate(), handle.getnframes()
            raw = handle.readframes(frames)
    except (wave.Error, EOFError, RuntimeError, struct.error, ValueError) as exc:  # wave reports bad chunks several ways
        raise NoraError(f"wav file {path} is corrupt or not PCM: {exc or type(exc).__name__}") from None
    except OSError as exc:
        raise NoraError(f"cannot read wav file {path}: {exc.strerror or exc}") from None
    if width not in (1, 2, 4) or channels < 1 or rate < 1:
        raise NoraError(f"wav file {path}: unsupported format ({channels} channels, {8 * width}-bit, {rate} Hz)")
    if len(raw) != frames * channels * width:
        raise NoraError(f"wav file {path} is corrupt or truncated: {len(raw)} bytes of audio, header says {frames * channels * width}")
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    else:
        dtype = "<i2" if width == 2 else "<i4"
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels).mean(axis=1), rate


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """To 16 kHz (polyphase, so 8 kHz FSDD is an exact 2x upsampling)."""
    if rate == SAMPLE_RATE:
        return samples
    g = gcd(SAMPLE_RATE, rate)
    up, down = SAMPLE_RATE // g, rate // g
    return resample_poly(samples, up, down, window=_lowpass(up, down)).astype(np.float32)


@lru_cache(maxsize=8)
def _lowpass(up: int, down: int) -> np.ndarray:
    """scipy's default anti-aliasing filter for ``resample_poly``, designed once instead of per file."""
    rate = max(up, down)
    return firwin(20 * rate + 1, 1.0 / rate, window=("kaiser", 5.0))


def to_clip(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample to 16 kHz and centre-crop or zero-pad to exactly 1 s, keeping the word in view."""
    samples = resample(samples, rate)
    n = samples.shape[0]
    if n >= CLIP_SAMPLES:
        start = (n - CLIP_SAMPLES) // 2
        return samples[start : start + CLIP_SAMPLES]
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    start = (CLIP_SAMPLES - n) // 2
    clip[start : start + n] = samples
    return clip


def mel_filterbank() -> np.ndarray:
    """``[N_FFT // 2 + 1, N_MELS]`` triangular filters equally spaced on the HTK mel scale."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(F_MIN), to_mel(F_MAX), N_MELS + 2))
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)[:, None]
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


_FILTERS = mel_filterbank()
_WINDOW_FN = np.hanning(WINDOW + 1)[:-1].astype(np.float32)  # periodic Hann


def mfcc(clips: np.ndarray) -> np.ndarray:
    """``[N, 16000]`` clips to ``[N, N_MFCC, N_FRAMES]`` float32 features (coefficients x frames)."""
    clips = np.asarray(clips, dtype=np.float32).reshape(-1, CLIP_SAMPLES)
    frames = np.lib.stride_tricks.sliding_window_view(clips, WINDOW, axis=1)[:, ::HOP].reshape(-1, WINDOW)
    spectrum = rfft(frames * _WINDOW_FN, n=N_FFT, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    log_mel = np.log(power @ _FILTERS + LOG_FLOOR)  # 2-D so that numpy hands it to BLAS
    coeffs = dct(log_mel, type=2, norm="ortho", axis=-1)[:, :N_MFCC]
    return np.ascontiguousarray(coeffs.reshape(-1, N_FRAMES, N_MFCC).transpose(0, 2, 1))


def clip_features(clips: Iterable[np.ndarray], count: int) -> np.ndarray:
    """MFCCs of ``count`` 1 s clips drawn from an iterator, a chunk at a time so memory stays small."""
    out = np.empty((count, N_MFCC, N_FRAMES), dtype=np.float32)
    buffer = np.empty((_CHUNK, CLIP_SAMPLES), dtype=np.float32)
    filled = done = 0
    for clip in clips:
        buffer[filled] = clip
        filled += 1
        if filled == _CHUNK:
            out[done : done + filled] = mfcc(buffer)
            done, filled = done + filled, 0
    if filled:
        out[done : done + filled] = mfcc(buffer[:filled])
        done += filled
    if done != count:
        raise ValueError(f"expected {count} clips, got {done}")
    return out


def wav_clips(paths: Iterable[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        yield to_clip(*read_wav(path))


def normalise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-coefficient standardisation, shaped ``[N, 1, N_MFCC, N_FRAMES]`` for CNNs."""
    scaled = (features - mean[None, :, None]) / std[None, :, None]
    return scaled[:, None].astype(np.float32)


def coefficient_stats(features: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and std of each coefficient over clips and frames (the training split's, by convention)."""
    mean = features.mean(axis=(0, 2), dtype=np.float64)
    std = features.std(axis=(0, 2), dtype=np.float64)
    return {"mean": mean.astype(np.float32), "std": np.maximum(std, 1e-6).astype(np.float32)}
