"""Exact and near duplicates.

Exact: identical bytes (same SHA-256). Near: the Pearson correlation of two 64x64 grayscale thumbnails is at
least a threshold. The thumbnail correlation survives JPEG re-encoding, small resizing and brightness/contrast
changes, and all pairs are compared as one matrix product per block of rows (no Python loop over pairs).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

THUMB = 64


def fingerprint(gray: Image.Image) -> np.ndarray:
    """(4096,) float32, zero mean and unit norm, so a dot product of two fingerprints is their correlation."""
    thumb = np.asarray(gray.resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float32).ravel()
    thumb -= thumb.mean()
    norm = float(np.linalg.norm(thumb))
    return thumb / norm if norm > 0 else thumb  # a blank image correlates with nothing


def near_pairs(
    a: np.ndarray, b: np.ndarray | None, threshold: float, block: int = 1024
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (rows, cols, similarity) of all pairs with similarity >= threshold.

    `a` is (N, D) and `b` is (M, D) fingerprints; with `b=None` pairs within `a` are found, each once (i < j).
    Memory stays at block x M floats whatever the dataset size.
    """
    same = b is None
    other = a if same else b
    for start in range(0, len(a), block):
        sims = a[start : start + block] @ other.T  # (block, M)
        if same:  # keep only pairs above the diagonal
            rows_in_block = np.arange(sims.shape[0])[:, None] + start
            sims[np.arange(other.shape[0])[None, :] <= rows_in_block] = -1.0
        rows, cols = np.nonzero(sims >= threshold)
        yield rows + start, cols, sims[rows, cols]


def best_match(a: np.ndarray, b: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `a`, the highest similarity to any row of `b` and its index."""
    best = np.full(len(a), -1.0, np.float32)
    index = np.full(len(a), -1, np.int64)
    if len(b) == 0:
        return best, index
    for start in range(0, len(a), block):
        sims = a[start : start + block] @ b.T
        index[start : start + block] = sims.argmax(axis=1)
        best[start : start + block] = sims.max(axis=1)
    return best, index


class DisjointSets:
    """Union-find over 0..n-1: groups of images linked by exact or near copies."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def groups(self) -> np.ndarray:
        """A group id per element: the smallest index in its group."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)
