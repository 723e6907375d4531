"""Noise physics: what a perturbation is, independent of where it is applied."""

from nora.noise.models import (
    NOISE_MODELS,
    GaussianAdditive,
    GaussianCombined,
    GaussianMultiplicative,
    NoiseModel,
    check_sigma,
    make_noise,
    noise_from_dict,
)
from nora.noise.rng import BankStream, Stream, make_stream
from nora.noise.weight import WeightNoise, clamp_after_step, clamp_weights_

__all__ = [
    "NOISE_MODELS",
    "GaussianAdditive",
    "GaussianCombined",
    "GaussianMultiplicative",
    "NoiseModel",
    "BankStream",
    "Stream",
    "WeightNoise",
    "check_sigma",
    "clamp_after_step",
    "clamp_weights_",
    "make_noise",
    "make_stream",
    "noise_from_dict",
]
