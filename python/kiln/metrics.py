"""Agreement between a backend's outputs and the reference's (parity, task checks)."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (last axis) of `a` with the same row of `b`, in float64.
    Two all-zero rows agree (1.0); a zero row against a non-zero one does not (0.0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dot = (a * b).sum(-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    both_zero = (np.abs(a).sum(-1) == 0) & (np.abs(b).sum(-1) == 0)
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), both_zero.astype(np.float64))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two whole tensors, flattened."""
    return float(cosine_rows(np.ravel(a), np.ravel(b)))
