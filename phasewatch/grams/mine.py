"""Mine strategic grams from a model's own successful rollouts (HICRA, arXiv:2509.03646, sec. 2.1).

Pipeline (each stage its own module):

1. keep the successful rollouts (reward >= ``min_reward``): one rollout = one document;
2. ``extraction``: count every n-gram (n in [3, 5]) and prefilter to a few thousand candidates
   that appear in many documents but sparingly within one;
3. ``embedding``: embed the candidates (all-MiniLM-L6-v2 by default, pluggable);
4. ``clustering``: group paraphrases (hierarchical clustering, cosine distance cut);
5. ``scoring``: score each cluster by its document frequency (share of documents holding any
   of its phrases) and keep the top ``top_frac`` of clusters; their phrases are the lexicon.

The result writes itself in the lexicon file format (``phasewatch/lexicon.py``), one block per
cluster with its score in a comment, so ``Lexicon.from_file`` and ``phasewatch label
--lexicon`` load it unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from phasewatch.grams.clustering import AgglomerativeClusterer
from phasewatch.grams.embedding import Embedder, embed_normalised, resolve_embedder
from phasewatch.grams.extraction import Candidates, ExtractionConfig, extract_candidates
from phasewatch.grams.rollouts import Rollout
from phasewatch.grams.scoring import cluster_document_frequency, top_clusters
from phasewatch.lexicon import Lexicon


class MiningError(ValueError):
    """The corpus cannot give a lexicon (too few successful rollouts, no frequent n-gram)."""


@dataclass(frozen=True)
class MiningConfig:
    """Every knob of the miner. Defaults follow the paper where it says something.

    n_min, n_max: n-gram sizes (paper: 3-5). top_frac: share of clusters kept (paper: 0.2).
    min_reward: a rollout is successful when its reward is at least this.
    min_successful: fewer successful documents than this is an error (document frequencies
        over a handful of documents are noise).
    min_df, min_docs, min_groups, max_per_doc, max_number_frac, closed_ratio, max_candidates:
        the prefilter, see ``phasewatch.grams.extraction``. ``min_groups`` applies only when
        the rollouts carry a ``group`` (the prompt they answer).
    distance_threshold: cosine distance cut for clustering; None = the embedder's own
        ``distance_threshold`` attribute, else 0.3.
    """

    n_min: int = 3
    n_max: int = 5
    top_frac: float = 0.2
    min_reward: float = 1.0
    min_successful: int = 20
    min_df: float = 0.01
    min_docs: int = 3
    min_groups: int = 3
    max_per_doc: float = 2.0
    max_number_frac: float = 0.0
    closed_ratio: float = 0.9
    max_candidates: int = 4000
    distance_threshold: float | None = None
    linkage: str = "average"

    def __post_init__(self) -> None:
        self.extraction()  # validates the prefilter fields
        if not (0.0 < self.top_frac <= 1.0):
            raise ValueError(f"top_frac={self.top_frac}: must be in (0, 1]")
        if self.min_successful < 1:
            raise ValueError(f"min_successful={self.min_successful}: must be at least 1")
        if not math.isfinite(self.min_reward):
            raise ValueError(f"min_reward={self.min_reward}: must be a finite number")
        if self.distance_threshold is not None:
            AgglomerativeClusterer(self.distance_threshold, self.linkage)  # validates
        if self.max_candidates > 20_000:
            raise ValueError(f"max_candidates={self.max_candidates}: at most 20000 (clustering is O(N^2) in memory)")

    def extraction(self) -> ExtractionConfig:
        return ExtractionConfig(
            n_min=self.n_min,
            n_max=self.n_max,
            min_df=self.min_df,
            min_docs=self.min_docs,
            min_groups=self.min_groups,
            max_per_doc=self.max_per_doc,
            max_number_frac=self.max_number_frac,
            closed_ratio=self.closed_ratio,
            max_candidates=self.max_candidates,
        )


@dataclass(frozen=True)
class Cluster:
    """One kept cluster: its phrases (most documents first) and its document frequency."""

    phrases: tuple[str, ...]
    document_frequency: float
    phrase_document_counts: tuple[int, ...]


@dataclass
class MiningResult:
    """The mined lexicon, the clusters it came from, and what each stage counted and took."""

    clusters: list[Cluster]
    n_clusters: int
    counts: dict[str, Any]
    seconds: dict[str, float]
    config: MiningConfig
    embedder: str
    distance_threshold: float
    source: str = "<rollouts>"

    @property
    def phrases(self) -> list[str]:
        return [phrase for cluster in self.clusters for phrase in cluster.phrases]

    @property
    def lexicon(self) -> Lexicon:
        return Lexicon(self.phrases, source=f"mined from {self.source}")

    def to_text(self) -> str:
        """The lexicon file: a header of comments, then one block per cluster, best first."""
        from phasewatch import __version__

        c = self.counts
        lines = [
            f"# strategic grams mined by `phasewatch grams mine` (phasewatch {__version__})",
            f"# source: {self.source}",
            f"# documents: {c.get('documents', 0)} successful rollouts"
            + (f" of {c['rollouts']} (reward >= {self.config.min_reward:g})" if "rollouts" in c else ""),
            f"# n-grams: n = {self.config.n_min}-{self.config.n_max}, {c.get('distinct n-grams', 0)} distinct with content words and no numbers; "
            f"{c.get('candidates', 0)} candidates after the prefilter (in >= {c.get('min document frequency (documents)', 0)} "
            f"documents, <= {self.config.max_per_doc:g} times per document)",
            f"# clusters: {self.n_clusters} ({self.embedder} embeddings, cosine distance < {self.distance_threshold:g}, "
            f"{self.config.linkage} linkage); kept the top {self.config.top_frac:g}: {len(self.clusters)} clusters, "
            f"{len(self.phrases)} phrases",
            "# Each block is one cluster; its score is the share of documents holding any of its phrases.",
            "# Use it: phasewatch label --lexicon THIS_FILE, or phasewatch.Config(lexicon=THIS_FILE).",
        ]
        for rank, cluster in enumerate(self.clusters, start=1):
            lines.append("")
            lines.append(
                f"# cluster {rank}: in {100 * cluster.document_frequency:.1f}% of documents, "
                f"{len(cluster.phrases)} phrase{'s' if len(cluster.phrases) != 1 else ''}"
            )
            lines.append(Lexicon(cluster.phrases).to_text().rstrip("\n"))
        return "\n".join(lines) + "\n"

    def save(self, path: Any) -> None:
        from pathlib import Path

        Path(path).write_text(self.to_text(), encoding="utf-8")

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (for logs and ``--json``)."""
        return {
            "source": self.source,
            "counts": dict(self.counts),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "clusters": self.n_clusters,
            "kept_clusters": len(self.clusters),
            "phrases": len(self.phrases),
            "embedder": self.embedder,
            "distance_threshold": self.distance_threshold,
            "config": asdict(self.config),
        }


def split_corpus(
    corpus: Iterable[Rollout | str], min_reward: float
) -> tuple[list[str], list[object] | None, dict[str, Any]]:
    """Texts of the successful rollouts (plain strings count as successful), their groups
    (None when no rollout has one; a rollout without one is a group of its own), and tallies."""
    texts: list[str] = []
    groups: list[object] = []
    total = unknown = 0
    any_group = False
    low, high = math.inf, -math.inf
    for item in corpus:
        total += 1
        if isinstance(item, str):
            texts.append(item)
            groups.append(("document", total))
        elif isinstance(item, Rollout):
            if item.reward is None:
                unknown += 1
                continue
            low, high = min(low, item.reward), max(high, item.reward)
            if item.reward >= min_reward:
                texts.append(item.text)
                any_group |= item.group is not None
                groups.append(("document", total) if item.group is None else ("group", item.group))
        else:
            raise TypeError(f"corpus item {total - 1}: expected a Rollout or a string, got {type(item).__name__}")
    tally: dict[str, Any] = {"rollouts": total, "rollouts without a reward": unknown, "documents": len(texts)}
    if high >= low:
        tally["reward range"] = [low, high]
    return texts, (groups if any_group else None), tally


def _too_few_message(tally: dict[str, Any], config: MiningConfig) -> str:
    docs, total = tally["documents"], tally["rollouts"]
    parts = [
        f"only {docs} successful rollout{'s' if docs != 1 else ''} (reward >= {config.min_reward:g}) of {total}; "
        f"mining needs at least {config.min_successful} (--min-successful)"
    ]
    if "reward range" in tally:
        low, high = tally["reward range"]
        parts.append(f"rewards seen range from {low:g} to {high:g}")
    if tally.get("rollouts without a reward"):
        parts.append(f"{tally['rollouts without a reward']} rollouts have no reward")
    parts.append("collect more rollouts, or lower --min-reward if your rewards are not 0/1")
    return "; ".join(parts)


def mine_strategic_grams(
    corpus: Iterable[Rollout | str],
    *,
    embedder: "Embedder | str | None" = None,
    config: MiningConfig | None = None,
    progress: bool = False,
    source: str = "<rollouts>",
) -> MiningResult:
    """Strategic grams of ``corpus`` (rollouts, or texts already known to be successful).

    Raises ``MiningError`` (a ``ValueError``) when there are fewer than ``min_successful``
    successful rollouts or no n-gram passes the prefilter, naming the numbers and the knob.
    """
    config = config or MiningConfig()
    seconds: dict[str, float] = {}
    texts, groups, tally = split_corpus(corpus, config.min_reward)
    if len(texts) < config.min_successful:
        raise MiningError(_too_few_message(tally, config))
    if groups is not None and config.min_groups > 1:
        n_groups = len(set(groups))
        if n_groups < config.min_groups:
            raise MiningError(
                f"the {len(texts)} successful rollouts answer only {n_groups} distinct groups (prompts); "
                f"a phrase must appear in at least {config.min_groups} (--min-groups): lower it or mine more prompts"
            )

    started = time.perf_counter()
    candidates = extract_candidates(texts, config.extraction(), groups=groups, progress=progress)
    seconds["extract"] = time.perf_counter() - started
    counts = {**tally, **candidates.counts}
    if len(candidates) < 2:
        group_rule = f", in >= {config.min_groups} groups" if groups is not None and config.min_groups > 1 else ""
        raise MiningError(
            f"{len(candidates)} n-gram(s) passed the prefilter over {len(texts)} documents "
            f"(in >= {candidates.counts['min document frequency (documents)']} documents{group_rule}, "
            f"<= {config.max_per_doc:g} times per document, not only stop words, no numbers); "
            "lower --min-df or raise --max-per-doc, or mine more rollouts"
        )

    embedder_obj = resolve_embedder(embedder, progress=progress)
    started = time.perf_counter()
    vectors = embed_normalised(embedder_obj, candidates.phrases)
    seconds["embed"] = time.perf_counter() - started

    threshold = config.distance_threshold
    if threshold is None:
        threshold = float(getattr(embedder_obj, "distance_threshold", 0.3))
    started = time.perf_counter()
    labels = AgglomerativeClusterer(threshold, config.linkage).fit_predict(vectors)
    seconds["cluster"] = time.perf_counter() - started

    started = time.perf_counter()
    clusters, n_clusters = _score(candidates, labels, config.top_frac)
    seconds["score"] = time.perf_counter() - started
    name = getattr(embedder_obj, "name", None) or type(embedder_obj).__name__
    return MiningResult(
        clusters=clusters,
        n_clusters=n_clusters,
        counts=counts,
        seconds=seconds,
        config=config,
        embedder=str(name),
        distance_threshold=threshold,
        source=source,
    )


def _score(candidates: Candidates, labels: np.ndarray, top_frac: float) -> tuple[list[Cluster], int]:
    scores = cluster_document_frequency(candidates.pair_candidate, candidates.pair_doc, labels, candidates.n_docs)
    sizes = np.bincount(labels, minlength=scores.size)
    chosen = top_clusters(scores, top_frac, sizes)
    clusters = []
    for c in chosen.tolist():
        members = np.flatnonzero(labels == c)  # already in candidate rank order: most documents first
        clusters.append(
            Cluster(
                phrases=tuple(candidates.phrases[i] for i in members),
                document_frequency=float(scores[c]),
                phrase_document_counts=tuple(int(candidates.df[i]) for i in members),
            )
        )
    return clusters, int(scores.size)

