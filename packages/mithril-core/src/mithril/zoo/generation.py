"""Autoregressive generation with a key/value cache, for any decoder built from Mithril's layers.

A decoder comes in two forms built from the same blocks, with the same parameter keys: the full
model (input "input_ids" [B, T], output "logits" [B, T, V], causal attention over the sequence) and
its *step* model, which reads a chunk of L tokens and attends over a cache of fixed length S:

- inputs "input_ids" [B, L] (int) and "position_ids" [B, L] (int, when the model has positions);
- for each attention layer, inputs "<layer>.past_key" / "<layer>.past_value" [B, S, width] and
  "<layer>.cache_mask" [L, S] (additive: 0 where a query may attend to a cached entry, -inf
  elsewhere); outputs "<layer>.present_key" / "<layer>.present_value" [B, S, width], the cache with
  the chunk's keys and values appended at the end (the oldest L entries drop off);
- output "logits" [B, L, V], or only the last position's [B, 1, V] (all that generation reads: a
  prompt's other logits are work for nothing; see `keep_last`).

`attention(...)` adds either form of causal multi-head attention to a block, and `generate(...)`
runs the loop: it compiles the step model for the prompt (L = T) and for single tokens (L = 1),
reads the prompt in one call and then feeds each new token, so each token costs O(S) work instead
of a rerun of the sequence. Every backend runs it, GGML's static graphs included: the cache has one
fixed shape for the whole call.

Given a `cache_key` naming the decoder, the compiled step models are kept for later calls with the
same backend, batch and lengths (the last STEP_MODELS_KEPT of them; `clear_cache()` drops them):
compiling takes longer than a few dozen tokens. A kept GGML program holds the weights of its last
call until its next one; weights passed as `backend.frozen(...)` arrays stay converted (quantized)
across calls, while plain arrays are converted again by each call, since they may have been written.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

from ..models.attention import AttentionHeads
from ..models.base import Model
from ..models.sequence import Concat, Index

__all__ = [
    "CachedAttention",
    "attention",
    "cache_mask",
    "check_params",
    "check_generate_args",
    "clear_cache",
    "generate",
    "keep_last",
    "sample",
]

CACHE_INPUTS = ("past_key", "past_value")
MASK = "cache_mask"
STEP_MODELS_KEPT = 16  # compiled step models kept across calls: a prompt's and a next token's, for eight shapes

_step_models: OrderedDict[tuple[Any, ...], tuple[Any, dict[str, list[str]]]] = OrderedDict()
_step_models_lock = threading.Lock()


def clear_cache() -> None:
    """Drop the compiled step models `generate` keeps between calls (and the weights they hold)."""
    with _step_models_lock:
        _step_models.clear()


class CachedAttention(Model):
    """AttentionHeads over a key/value cache: a chunk of `chunk` queries attends over the cache with its own keys
    and values appended (present_key, present_value), as cache_mask allows."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int | None = None,
        scale: float | None = None,
        chunk: int = 1,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"CachedAttention: chunk must be an int >= 1, got {chunk!r}")
        m: Model = self  # composed in place: |= returns the same model
        for kind in ("key", "value"):
            m |= Index[:, chunk:](input=f"past_{kind}", output=f"kept_{kind}")
            m |= Concat(2, dim=1)(input0=f"kept_{kind}", input1=kind, output=f"present_{kind}")
        m |= AttentionHeads(num_heads, num_kv_heads, scale=scale, attn_mask=True)(
            query="query", key="present_key", value="present_value", attn_mask=MASK, output="output"
        )
        self.canonical_input = "query"


def attention(
    model: Model,
    num_heads: int,
    num_kv_heads: int | None = None,
    scale: float | None = None,
    *,
    cached: bool,
    chunk: int = 1,
    query: str = "query",
    key: str = "key",
    value: str = "value",
    output: str = "output",
) -> Model:
    """Add causal multi-head attention to `model`: AttentionHeads(is_causal=True), or CachedAttention for chunks
    of `chunk` tokens with the cache keys (past_key, past_value, cache_mask, present_key, present_value) exposed."""
    if cached:
        names = {n: n for n in (*CACHE_INPUTS, MASK, "present_key", "present_value")}
        layer: Any = CachedAttention(num_heads, num_kv_heads, scale, chunk, name="cache")
        model |= layer(query=query, key=key, value=value, output=output, **names)
    else:
        heads = AttentionHeads(num_heads, num_kv_heads, is_causal=True, scale=scale)
        model |= heads(query=query, key=key, value=value, output=output)
    return model


def keep_last(model: Model, hidden: str, logits_to_keep: int, owner: str = "keep_last") -> str:
    """The connection holding the last `logits_to_keep` positions of `hidden` [B, T, ...] (all for 0), as HF's
    `logits_to_keep`: a decoder applies its head to it, so a prompt read for generation projects one position."""
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(
            f"{owner}: logits_to_keep must be an int >= 0 (0 keeps every position), got {logits_to_keep!r}"
        )
    if logits_to_keep == 0:
        return hidden
    model |= Index[:, -logits_to_keep:](input=hidden, output=f"{hidden}_last")
    return f"{hidden}_last"


def cache_mask(cache_length: int, chunk: int, start: int) -> np.ndarray:
    """The additive mask [chunk, cache_length] of a step reading positions start .. start + chunk - 1: after the
    append, position p sits at index cache_length - chunk - start + p, and query i sees positions <= start + i."""
    index = np.arange(cache_length)[None, :]
    first = cache_length - chunk - start  # where position 0 sits
    last = cache_length - chunk + np.arange(chunk)[:, None]  # where each query's own position sits
    return np.where((index >= first) & (index <= last), 0.0, -np.inf)


def check_params(owner: str, params: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse params with missing, extra or mis-shaped keys, naming them, before any work."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{owner}: params must be a mapping of parameter key to array, got {type(params).__name__}")
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing or extra:
        raise KeyError(f"{owner}: params do not fit the config: missing keys {missing}, unexpected keys {extra}")
    for key, shape in expected.items():
        given = tuple(np.shape(params[key]))
        if given != tuple(shape):
            raise ValueError(
                f"{owner}: params[{key!r}] has shape {list(given)}, expected {list(shape)} (from the config)"
            )


def check_generate_args(
    owner: str,
    input_ids: Any,
    max_new_tokens: int,
    *,
    vocab_size: int,
    max_positions: int | None,
    positions_name: str = "max_positions",
    temperature: float,
    top_k: int | None,
    seed: int | None,
) -> np.ndarray:
    """Check the arguments of a generate call and return the prompt as an int64 [B, T] array."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"{owner}: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"{owner}: temperature must be a number >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"{owner}: top_k must be None or an int >= 1, got {top_k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"{owner}: seed must be None or an int, got {seed!r}")
    ids = _host_ids(owner, input_ids)
    if ids.ndim != 2:
        raise ValueError(f"{owner}: input_ids must have shape [batch, length], got shape {list(ids.shape)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{owner}: input_ids is empty (shape {list(ids.shape)}); give at least one prompt token")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{owner}: input_ids holds token id {bad}, outside [0, {vocab_size}) (vocab_size)")
    length = ids.shape[1]
    if max_positions is not None and length + int(max_new_tokens) > max_positions:
        raise ValueError(
            f"{owner}: prompt length {length} + max_new_tokens {int(max_new_tokens)} = "
            f"{length + int(max_new_tokens)} exceeds the model's {max_positions} positions ({positions_name})"
        )
    return ids


def _host_ids(owner: str, input_ids: Any) -> np.ndarray:
    """input_ids (NumPy, a list, or any framework's int tensor) as an int64 NumPy array."""
    value = input_ids
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    try:
        ids = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - reported with the argument's name
        raise TypeError(
            f"{owner}: input_ids must be an int array [batch, length], got {type(input_ids).__name__}"
        ) from error
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        if ids.size == 0 and ids.dtype == np.float64:  # an empty list
            ids = ids.astype(np.int64)
        else:
            raise TypeError(f"{owner}: input_ids must hold integer token ids, got dtype {ids.dtype}")
    return ids.astype(np.int64)


def sample(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> np.ndarray:
    """The next token of each row of logits [B, V]: argmax at temperature 0, else a draw from the softmax."""
    if temperature == 0:
        return np.argmax(logits, axis=-1)
    scores = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = np.sort(scores, axis=-1)[:, -top_k][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random((scores.shape[0], 1)) * cumulative[:, -1:]
    return np.minimum((cumulative <= draws).sum(axis=-1), scores.shape[-1] - 1)


def generate(
    backend: Any,
    step_model: Callable[[int], Model],
    params: Mapping[str, Any],
    input_ids: Any,
    max_new_tokens: int = 20,
    *,
    vocab_size: int,
    max_positions: int | None = None,
    positions_name: str = "max_positions",
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    owner: str = "generate",
    cache_key: Hashable | None = None,
) -> np.ndarray:
    """input_ids [B, T] followed by max_new_tokens tokens from a decoder: ids [B, T + max_new_tokens].

    step_model(chunk) builds the decoder's step model reading `chunk` tokens per call (the protocol above).
    cache_key names the decoder it builds (equal keys, the same models): with one, the compiled step
    models are kept for later calls; without, each call compiles its own.
    """
    from ..compiler import compile as ml_compile  # noqa: PLC0415 - mithril.zoo stays importable on its own

    ids = check_generate_args(
        owner,
        input_ids,
        max_new_tokens,
        vocab_size=vocab_size,
        max_positions=max_positions,
        positions_name=positions_name,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
    )
    batch, length = ids.shape
    total = length + int(max_new_tokens)
    out = np.zeros((batch, total), dtype=np.int64)
    out[:, :length] = ids
    if max_new_tokens == 0:
        return out
    cache_length = total - 1  # the last new token is never fed back

    def compiled_step(chunk: int) -> tuple[Any, dict[str, list[str]]]:
        if cache_key is None:
            return compile_step(chunk)
        key = (backend, cache_key, batch, chunk, cache_length)
        with _step_models_lock:
            kept = _step_models.get(key)
            if kept is not None:
                _step_models.move_to_end(key)
                return kept
        kept = compile_step(chunk)
        with _step_models_lock:
            _step_models[key] = kept
            while len(_step_models) > STEP_MODELS_KEPT:
                _step_models.popitem(last=False)
        return kept

    def compile_step(chunk: int) -> tuple[Any, dict[str, list[str]]]:
        model = step_model(chunk)
        keys = _step_keys(owner, model)
        shapes: dict[str, list[int | None]] = {"input_ids": [batch, chunk]}
        if keys["positions"]:
            shapes["position_ids"] = [batch, chunk]
        shapes.update({k: [chunk, cache_length] for k in keys["masks"]})
        shapes.update({k: [batch, cache_length, None] for k in keys["past"]})
        outputs = ["logits", *(_present(k) for k in keys["past"])]
        return ml_compile(model, backend, shapes=shapes, outputs=outputs, static_inference=True), keys

    weights = {k: backend.frozen(backend.array(v)) for k, v in params.items()}  # unchanged until we return
    rng = np.random.default_rng(seed)
    prompt, keys = compiled_step(length)
    shapes = prompt.shapes  # a dict built per read
    cache = {k: backend.zeros(*shapes[k]) for k in keys["past"]}

    def step(compiled: Any, start: int, chunk: int) -> None:
        """Feed positions start .. start + chunk - 1, update the cache and choose the token after them."""
        nonlocal cache
        # Fresh host arrays every step: a backend may alias them and run the step asynchronously.
        inputs = {"input_ids": backend.array(out[:, start : start + chunk].copy())}
        if keys["positions"]:
            positions = np.broadcast_to(np.arange(start, start + chunk), (batch, chunk))
            inputs["position_ids"] = backend.array(np.ascontiguousarray(positions, dtype=np.int64))
        mask = backend.array(cache_mask(cache_length, chunk, start))
        inputs.update(dict.fromkeys(keys["masks"], mask))
        result = compiled.evaluate(weights, {**inputs, **cache})
        cache = {k: result[_present(k)] for k in keys["past"]}
        logits = np.asarray(backend.to_numpy(result["logits"]))[:, -1, :]
        out[:, start + chunk] = sample(logits, float(temperature), top_k, rng)

    step(prompt, 0, length)
    if max_new_tokens > 1:
        single = prompt if length == 1 else compiled_step(1)[0]
        for position in range(length, cache_length):
            step(single, position, 1)
    return out


def _present(past_key: str) -> str:
    """The output holding the updated cache of a past_* input."""
    head, _, last = past_key.rpartition(".")
    return f"{head}.present_{last[len('past_') :]}" if head else f"present_{last[len('past_') :]}"


def _step_keys(owner: str, step_model: Model) -> dict[str, list[str]]:
    """The step model's cache inputs, cache masks and whether it reads position_ids, by the protocol's names."""
    keys = [k for k in step_model.shapes if _last(k) in (*CACHE_INPUTS, MASK) or k in ("input_ids", "position_ids")]
    past = [k for k in keys if _last(k) in CACHE_INPUTS]
    masks = [k for k in keys if _last(k) == MASK]
    if "input_ids" not in keys or "logits" not in step_model.shapes or not past:
        raise ValueError(
            f"{owner}: the step model needs an 'input_ids' input, a 'logits' output and cache inputs named "
            f"'<layer>.past_key' / '<layer>.past_value' (see mithril.zoo.generation); its keys are "
            f"{sorted(step_model.shapes)[:12]}..."
        )
    return {"past": past, "masks": masks, "positions": ["position_ids"] if "position_ids" in keys else []}


def _last(key: str) -> str:
    return key.rpartition(".")[2]
