"""What the GPT-2 and Llama zoo tests share: a backend or a skip saying why, and top-1 agreement with HF."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

import mithril as ml
from mithril.models import Model

BACKENDS = {"numpy": "mithril_numpy", "torch": "mithril_torch", "jax": "mithril_jax", "ggml": "mithril_ggml"}


def backend_or_skip(name: str, dtype: str, **options: Any) -> ml.Backend:
    """ml.backend(name, ...), or a skip naming the plugin that is not installed or cannot be used."""
    if importlib.util.find_spec(BACKENDS[name]) is None:
        pytest.skip(f"the {name} backend ({BACKENDS[name]}) is not installed")
    try:
        return ml.backend(name, dtype=dtype, **options)
    except ml.BackendNotFoundError as exc:
        pytest.skip(f"the {name} backend cannot be used here: {exc}")


def top1_agreement(backend: ml.Backend, model: Model, params: dict[str, Any], hf: Any, vocab_size: int) -> float:
    """The share of 4 x 32 positions whose most likely next token is HF's, int4 calibrated by GPTQ first."""
    import torch  # noqa: PLC0415 - the zoo tests skip without it

    def ids(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, vocab_size, (4, 32))

    compiled = ml.compile(model, backend, shapes={"input_ids": [4, 32]}, static_inference=True)
    if backend.quantize == "int4":  # type: ignore[attr-defined]
        import mithril_ggml  # noqa: PLC0415 - only with the ggml backend

        mithril_ggml.calibrate(compiled, params, [{"input_ids": ids(10 + i)} for i in range(8)])
    got = compiled.evaluate(params, {"input_ids": ids(5)})["logits"]
    with torch.no_grad():
        expected = hf(torch.tensor(ids(5))).logits.numpy()
    return float((got.argmax(-1) == expected.argmax(-1)).mean())
