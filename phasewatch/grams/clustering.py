"""Group phrase embeddings into clusters of phrases that make the same move.

``AgglomerativeClusterer`` merges clusters bottom-up (scipy's hierarchical clustering) and cuts
the tree at a cosine distance: two phrases end up together when their clusters are, on
average, closer than ``distance_threshold``. A distance cut suits strategic grams better than
a fixed number of clusters: how many distinct moves a model makes is what the miner is trying
to find out, and a cut keeps a rare but distinct move ("let me double-check") apart from a
frequent one ("let me think") instead of forcing them together to reach some k.

Cost: the condensed distance matrix holds N(N-1)/2 float64 values (N = 4,000: 64 MB;
N = 20,000: 1.6 GB, the most ``fit`` accepts) and average linkage is O(N^2) time. The miner
bounds N before it gets here.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 20_000
LINKAGES = ("average", "complete", "single", "weighted")


class AgglomerativeClusterer:
    """Hierarchical clustering with cosine distance, cut at ``distance_threshold``.

    ``fit(X)`` stores ``labels_`` (one int per row, clusters numbered 0..k-1 in order of first
    appearance, so the result does not depend on scipy's internal numbering) and returns self.
    """

    def __init__(self, distance_threshold: float = 0.3, linkage: str = "average"):
        if not (0.0 < distance_threshold <= 2.0):
            raise ValueError(f"distance_threshold={distance_threshold}: a cosine distance in (0, 2]")
        if linkage not in LINKAGES:
            raise ValueError(f"linkage={linkage!r}: use one of {LINKAGES}")
        self.distance_threshold = float(distance_threshold)
        self.linkage = linkage
        self.labels_: np.ndarray | None = None

    def fit(self, embeddings: np.ndarray) -> "AgglomerativeClusterer":
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        points = np.asarray(embeddings, dtype=np.float64)
        if points.ndim != 2:
            raise ValueError(f"clustering: expected an (N, D) array, got shape {points.shape}")
        n = points.shape[0]
        if n > MAX_POINTS:
            raise ValueError(f"clustering: {n} phrases is more than {MAX_POINTS}; lower max_candidates")
        if n <= 1:
            self.labels_ = np.zeros(n, dtype=np.int64)
            return self
        distances = np.clip(pdist(points, metric="cosine"), 0.0, 2.0)
        distances[~np.isfinite(distances)] = 1.0  # an all-zero vector: unrelated to everything
        tree = linkage(distances, method=self.linkage)
        raw = fcluster(tree, t=self.distance_threshold, criterion="distance")
        _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        self.labels_ = rank[inverse.reshape(-1)]
        return self

    def fit_predict(self, embeddings: np.ndarray) -> np.ndarray:
        self.fit(embeddings)
        assert self.labels_ is not None
        return self.labels_

    def __repr__(self) -> str:
        return f"AgglomerativeClusterer(distance_threshold={self.distance_threshold}, linkage={self.linkage!r})"
