"""Uncertainty: multi-member predictions, their metrics, repulsive training, and uncertainty under noise.

``metrics`` scores probabilities ``[N, M, C]``; ``repulsion`` and ``objectives`` train repulsive
last-layer ensembles; ``evaluate`` runs a checkpoint on in-distribution, OOD and shifted data,
clean and under a noise specification; ``active`` is a small pool-based active-learning loop.
"""

from nora.uncertainty.metrics import classification, decompose, detection, ood

__all__ = ["classification", "decompose", "detection", "ood"]
