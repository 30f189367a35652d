"""Cluster document frequency, and which clusters become strategic grams.

The HICRA paper scores a cluster by the share of (successful) solutions that contain at least
one of its n-grams, and keeps the top 20% of clusters. A cluster of paraphrases of one move
scores the union of its members' documents, so a move the model phrases many ways ranks by
how often the *move* happens, not by how often one wording of it does.
"""

from __future__ import annotations

import math

import numpy as np


def cluster_document_frequency(
    pair_candidate: np.ndarray, pair_doc: np.ndarray, labels: np.ndarray, n_docs: int
) -> np.ndarray:
    """Per cluster: the fraction of the ``n_docs`` documents holding any of its phrases.

    ``(pair_candidate[k], pair_doc[k])`` says candidate phrase ``pair_candidate[k]`` occurs in
    document ``pair_doc[k]``; ``labels[i]`` is phrase i's cluster.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    if n_docs <= 0 or n_clusters == 0:
        return np.zeros(n_clusters, dtype=np.float64)
    cluster = labels[np.asarray(pair_candidate, dtype=np.int64)]
    combined = np.unique(cluster * np.int64(n_docs) + np.asarray(pair_doc, dtype=np.int64))
    counts = np.bincount(combined // n_docs, minlength=n_clusters)
    return counts / float(n_docs)


def top_clusters(scores: np.ndarray, top_frac: float, sizes: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``ceil(top_frac * k)`` best clusters, best first.

    Ties in score go to the larger cluster (more ways of phrasing the move), then to the
    lower index (the order phrases were ranked in), so the choice is deterministic.
    """
    if not (0.0 < top_frac <= 1.0):
        raise ValueError(f"top_frac={top_frac}: must be in (0, 1]")
    scores = np.asarray(scores, dtype=np.float64)
    k = scores.size
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    keep = max(1, math.ceil(top_frac * k - 1e-9))
    size_key = np.zeros(k) if sizes is None else -np.asarray(sizes, dtype=np.float64)
    order = np.lexsort((np.arange(k), size_key, -scores))
    return order[:keep]
