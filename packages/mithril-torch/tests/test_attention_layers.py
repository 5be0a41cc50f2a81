"""Attention layers against torch in float64: outputs and every gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mithril as ml
from mithril.models import (
    GELU,
    ApplyRotaryEmb,
    Arange,
    Model,
    MultiheadAttention,
    RMSNorm,
    RotaryEmbedding,
    ScaledDotProductAttention,
)
from mithril.primitives.attention import rotary_tables


def _backends() -> list[ml.Backend]:
    """Every installed backend in float64 (GGML has float32 only and is left to the conformance kit)."""
    found: list[ml.Backend] = [ml.NumpyBackend(dtype=ml.float64)]
    import mithril_torch  # noqa: PLC0415

    found.append(mithril_torch.TorchBackend(dtype=ml.float64))
    try:
        import mithril_jax  # noqa: PLC0415
    except ImportError:
        return found
    found.append(mithril_jax.JaxBackend(dtype=ml.float64))
    return found


BACKENDS = _backends()
IDS = [b.name for b in BACKENDS]


def _run(model: Model, backend: ml.Backend, arrays: dict[str, np.ndarray], params: dict[str, np.ndarray], seed):
    shapes = {k: list(v.shape) for k, v in arrays.items()}
    compiled = ml.compile(model, backend, shapes=shapes)
    p = {k: backend.array(v) for k, v in params.items()}
    x = {k: backend.array(v) for k, v in arrays.items()}
    out, grads = compiled.evaluate(p, x, {"output": backend.array(seed)})
    return np.asarray(backend.to_numpy(out["output"])), {k: np.asarray(backend.to_numpy(g)) for k, g in grads.items()}


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("case", ["plain", "causal", "mask", "gqa"])
def test_sdpa_matches_torch(backend: ml.Backend, case: str) -> None:
    rng = np.random.default_rng(0)
    kv_heads = 2 if case == "gqa" else 4
    q, k, v = rng.normal(size=(2, 4, 5, 3)), rng.normal(size=(2, kv_heads, 5, 3)), rng.normal(size=(2, kv_heads, 5, 6))
    mask = rng.normal(size=(5, 5)) if case == "mask" else None
    layer = ScaledDotProductAttention(
        is_causal=case in ("causal", "gqa"),
        scale=0.7 if case == "mask" else None,
        enable_gqa=case == "gqa",
        attn_mask=mask is not None,
    )
    model = Model()
    names = {"query": "q", "key": "k", "value": "v", "output": "output"}
    model |= layer(**names, **({"attn_mask": "m"} if mask is not None else {}))
    seed = rng.normal(size=(2, 4, 5, 6))
    arrays = {"q": q, "k": k, "v": v, **({"m": mask} if mask is not None else {})}
    tensors = {n: torch.tensor(a, requires_grad=True) for n, a in arrays.items()}
    want = F.scaled_dot_product_attention(
        tensors["q"],
        tensors["k"],
        tensors["v"],
        tensors.get("m"),
        is_causal=case in ("causal", "gqa"),
        scale=0.7 if case == "mask" else None,
        enable_gqa=case == "gqa",
    )
    want.backward(torch.tensor(seed))
    compiled = ml.compile(model, backend, shapes={n: list(a.shape) for n, a in arrays.items()})
    out, grads = compiled.evaluate(
        {}, {n: backend.array(a) for n, a in arrays.items()}, {"output": backend.array(seed)}
    )
    np.testing.assert_allclose(backend.to_numpy(out["output"]), want.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert grads == {} or set(grads) <= set(arrays)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_matches_torch(backend: ml.Backend, batch_first: bool) -> None:
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=batch_first).double()
    rng = np.random.default_rng(1)
    shape = (3, 5, 8) if batch_first else (5, 3, 8)
    x, seed = rng.normal(size=shape), rng.normal(size=shape)
    xt = torch.tensor(x, requires_grad=True)
    want, _ = ref(xt, xt, xt, need_weights=False)
    want.backward(torch.tensor(seed))
    model = Model()
    model |= MultiheadAttention(8, 2, batch_first=batch_first, name="mha")(
        query="input", key="input", value="input", output="output"
    )
    params = {f"mha.{k}": v.detach().numpy() for k, v in ref.named_parameters()}
    out, grads = _run(model, backend, {"input": x}, params, seed)
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-9, atol=1e-12)
    for key, p in ref.named_parameters():
        np.testing.assert_allclose(grads[f"mha.{key}"], p.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_rms_norm_matches_torch(backend: ml.Backend, eps: float | None) -> None:
    ref = torch.nn.RMSNorm(6, eps=eps).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    rng = np.random.default_rng(2)
    x, seed = rng.normal(size=(3, 4, 6)) * 1e-7, rng.normal(size=(3, 4, 6))  # tiny inputs: eps matters
    xt = torch.tensor(x, requires_grad=True)
    want = ref(xt)
    want.backward(torch.tensor(seed))
    model = Model()
    model |= RMSNorm(6, eps=eps, name="norm")
    out, grads = _run(model, backend, {"input": x}, {"norm.weight": ref.weight.detach().numpy()}, seed)
    np.testing.assert_allclose(out, want.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(grads["norm.weight"], ref.weight.grad.numpy(), rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_gelu_tanh_matches_torch(backend: ml.Backend) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5)) * 3
    model = Model()
    model |= GELU(approximate="tanh")
    compiled = ml.compile(model, backend, shapes={"input": [4, 5]})
    out = compiled.evaluate({}, {"input": backend.array(x)})["output"]
    want = F.gelu(torch.tensor(x), approximate="tanh").numpy()
    np.testing.assert_allclose(backend.to_numpy(out), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_rotary_matches_hf(backend: ml.Backend) -> None:
    """Arange positions -> RotaryEmbedding -> ApplyRotaryEmb equals HF Llama's rotate_half formula."""
    batch, heads, length, dim = 2, 3, 5, 8
    rng = np.random.default_rng(4)
    x = rng.normal(size=(batch, heads, length, dim))
    model = Model()
    model |= Arange(dim=-1)(like="ids", output="positions")
    model |= RotaryEmbedding(dim, max_position_embeddings=16)(input="positions", cos="cos", sin="sin")
    model |= ApplyRotaryEmb(unsqueeze_dim=None)(input="input", cos="cos", sin="sin", output="output")
    ids = np.zeros((batch, length), np.int64)
    compiled = ml.compile(model, backend, shapes={"input": list(x.shape), "ids": [batch, length]})
    out = backend.to_numpy(compiled.evaluate({}, {"input": backend.array(x), "ids": backend.array(ids)})["output"])
    cos, sin = (t[:length].astype(np.float64) for t in rotary_tables(dim, 16, 10000.0))
    turned = np.concatenate([-x[..., dim // 2 :], x[..., : dim // 2]], axis=-1)
    np.testing.assert_allclose(out, x * cos + turned * sin, rtol=1e-12, atol=1e-12)
