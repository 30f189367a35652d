"""Strategic-gram mining: a planning lexicon learned from a model's own successful rollouts.

The shipped lexicon (``phasewatch/data/strategic_grams.txt``) is general. A model trained in
one domain has its own ways of planning; mining them from its successful rollouts, as the HICRA
paper does, gives labels tailored to it::

    from phasewatch.grams import RolloutWriter, mine_strategic_grams, read_rollouts
    result = mine_strategic_grams(read_rollouts("rollouts.jsonl"), embedder="minilm")
    result.save("my_grams.txt")            # then phasewatch.Config(lexicon="my_grams.txt")

or ``phasewatch grams mine rollouts.jsonl --out my_grams.txt``.

Modules: ``rollouts`` (the dump format, ``RolloutWriter``, readers), ``extraction`` (n-gram
counting and prefilter), ``embedding`` (embedders), ``clustering``, ``scoring``, ``mine``
(the pipeline). Importing this package is cheap: numpy only; scipy, the embedding model and
tqdm load when mining runs.
"""

from __future__ import annotations

from phasewatch._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Rollout": "phasewatch.grams.rollouts",
    "RolloutWriter": "phasewatch.grams.rollouts",
    "read_rollouts": "phasewatch.grams.rollouts",
    "iter_rollouts": "phasewatch.grams.rollouts",
    "Embedder": "phasewatch.grams.embedding",
    "HashingEmbedder": "phasewatch.grams.embedding",
    "MiniLMEmbedder": "phasewatch.grams.embedding",
    "AgglomerativeClusterer": "phasewatch.grams.clustering",
    "ExtractionConfig": "phasewatch.grams.extraction",
    "extract_candidates": "phasewatch.grams.extraction",
    "MiningConfig": "phasewatch.grams.mine",
    "MiningResult": "phasewatch.grams.mine",
    "MiningError": "phasewatch.grams.mine",
    "Cluster": "phasewatch.grams.mine",
    "mine_strategic_grams": "phasewatch.grams.mine",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
