"""GPT-2 generation and training against Hugging Face transformers on torch, and GGML's quantized generation.

GPT-2 small shapes (n_layer 12, n_embd 768, n_head 12, vocab 50257; random weights shared by both
sides through `gpt2.params_from_hf`), batch 1, prompt 32, 64 new tokens, float32, CPU:

- tokens/s of `gpt2.generate` on Mithril torch (and JAX) against HF's `generate` (greedy, KV cache), end to end
  and per decoded token (after the prompt); each side holds its weights as a deployment does (HF's module,
  Mithril's `backend.frozen(backend.array(...))`), and the first call, which compiles the two step
  models (and on GGML quantizes the weights), is timed on its own row;
- Mithril GGML int8 and int4 against GGML float32 and against Mithril torch (per decoded token), and each on
  two threads against one, per run: on a VM whose two vCPUs sometimes share a physical core, a quantized
  row's slow run shows two threads running no faster than one;
- per-token latency at token 60 over token 5 (median of tokens 58-62 over 3-7): the cache keeps it flat;
- forward + backward of a training step (batch 2, 64 tokens, logits' upstream gradient given) on a
  2-layer config against HF on torch;
- peak memory of one generate call per side, each in a fresh process, above the process holding the weights.

Run: python benchmarks/bench_transformers.py [--small]   (--small: 2 layers instead of 12)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, print_table  # noqa: E402

import mithril as ml  # noqa: E402
from mithril.zoo import generation, gpt2  # noqa: E402

PROMPT, NEW = 32, 64
GOALS = {"hf": 1.0, "quantized": 1 / 1.5, "latency": 1.3, "train": 1.05}


def _hf(config: gpt2.GPT2Config) -> Any:
    """A random-weight GPT2LMHeadModel of `config`, eval mode, dropout off."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(hf_config).eval()


def _timed_generate(backend: Any, config: gpt2.GPT2Config, params: Any, ids: np.ndarray) -> tuple[float, list[float]]:
    """(seconds for the whole generate call, seconds per new token: token i is the gap before choosing it)."""
    stamps: list[float] = []
    original = generation.sample

    def sample(*args: Any) -> np.ndarray:
        stamps.append(time.perf_counter())
        return original(*args)

    generation.sample = sample  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        out = gpt2.generate(backend, config, params, ids, max_new_tokens=NEW)
        total = time.perf_counter() - start
    finally:
        generation.sample = original
    assert out.shape == (1, PROMPT + NEW)
    return total, [b - a for a, b in zip(stamps, stamps[1:])]


def _around(latencies: list[float], token: int) -> float:
    return statistics.median(latencies[token - 3 : token + 2])


def generation_rows(config: gpt2.GPT2Config, runs: int) -> list[tuple[str, float, float, float, float | None]]:
    """tokens/s of Mithril torch against HF, GGML int8/int4 against float32 and torch, latency at 60 over 5."""
    import torch  # noqa: PLC0415

    hf = _hf(config)
    params = gpt2.params_from_hf(hf.state_dict(), config)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, PROMPT))
    with torch.no_grad():
        expected = hf.generate(
            torch.tensor(ids), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
            attention_mask=torch.ones_like(torch.tensor(ids)), pad_token_id=0,
        ).numpy()  # fmt: skip

    def hf_generate() -> None:
        with torch.no_grad():
            hf.generate(
                torch.tensor(ids), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                attention_mask=torch.ones_like(torch.tensor(ids)), pad_token_id=0,
            )  # fmt: skip

    backends = {
        "torch": ml.backend("torch", dtype=ml.float32),
        "jax": ml.backend("jax", dtype=ml.float32),
        "ggml f32": ml.GGMLBackend(),
        "ggml int8": ml.GGMLBackend(quantize="int8"),
        "ggml int4": ml.GGMLBackend(quantize="int4"),
        # diagnostic sides: each quantized kind on one thread, so each run shows whether the second core helped
        "ggml int8 1 thread": ml.GGMLBackend(quantize="int8", n_threads=1),
        "ggml int4 1 thread": ml.GGMLBackend(quantize="int4", n_threads=1),
    }
    weights = {name: {k: b.frozen(b.array(v)) for k, v in params.items()} for name, b in backends.items()}
    for kind in ("int8", "int4"):  # the same frozen arrays: quantized once for both thread counts
        weights[f"ggml {kind} 1 thread"] = weights[f"ggml {kind}"]
    generation.clear_cache()
    first = {name: _timed_generate(backend, config, weights[name], ids)[0] for name, backend in backends.items()}
    got = gpt2.generate(backends["torch"], config, weights["torch"], ids, max_new_tokens=NEW)
    print(f"Mithril torch greedy tokens equal HF's: {bool((got == expected).all())}")
    totals: dict[str, list[float]] = {name: [] for name in [*backends, "hf"]}
    per_token: dict[str, list[float]] = {name: [] for name in backends}
    latency: dict[str, list[list[float]]] = {name: [] for name in backends}
    for _ in range(runs):  # interleaved, so drift on a shared machine hits every side alike
        start = time.perf_counter()
        hf_generate()
        totals["hf"].append(time.perf_counter() - start)
        for name, backend in backends.items():
            total, lat = _timed_generate(backend, config, weights[name], ids)
            totals[name].append(total)
            per_token[name].append(statistics.median(lat[2:]))  # decoded tokens, after compiling the step model
            latency[name].append(lat)
    for run in range(runs):  # per run: does a quantized row miss only where two threads ran no faster than one?
        p = {name: values[run] for name, values in per_token.items()}
        print(
            f"run {run + 1}: "
            + "; ".join(
                f"{kind} / f32 {p[f'ggml {kind}'] / p['ggml f32']:.3f} "
                f"({kind} on 2 threads / on 1: {p[f'ggml {kind}'] / p[f'ggml {kind} 1 thread']:.3f})"
                for kind in ("int8", "int4")
            )
        )
    t = {name: statistics.median(v) for name, v in totals.items()}
    d = {name: statistics.median(v) for name, v in per_token.items()}
    rows: list[tuple[str, float, float, float, float | None]] = [
        ("torch generate, end to end (s per token)", t["torch"] / NEW, t["hf"] / NEW, t["torch"] / t["hf"], 1.0),
        ("torch generate, first call (compiles)", first["torch"] / NEW, t["hf"] / NEW, first["torch"] / t["hf"], None),
        ("torch decode (s per token) vs HF end to end", d["torch"], t["hf"] / NEW, d["torch"] * NEW / t["hf"], None),
        ("jax generate, end to end vs HF", t["jax"] / NEW, t["hf"] / NEW, t["jax"] / t["hf"], None),
    ]
    for kind in ("int8", "int4"):
        q = d[f"ggml {kind}"]
        rows.append((f"ggml {kind} decode vs ggml f32", q, d["ggml f32"], q / d["ggml f32"], GOALS["quantized"]))
        rows.append((f"ggml {kind} decode vs Mithril torch", q, d["torch"], q / d["torch"], None))
        e, f = t[f"ggml {kind}"], t["ggml f32"]
        rows.append((f"ggml {kind} end to end vs ggml f32", e / NEW, f / NEW, e / f, GOALS["quantized"]))
        rows.append((f"ggml {kind} first call (quantizes) vs f32's", first[f"ggml {kind}"], first["ggml f32"],
                     first[f"ggml {kind}"] / first["ggml f32"], None))  # fmt: skip
    for kind in ("int8", "int4"):
        two, one = d[f"ggml {kind}"], d[f"ggml {kind} 1 thread"]
        rows.append((f"ggml {kind} decode, 2 threads vs 1 (diagnostic)", two, one, two / one, None))
    for name in backends:
        late = statistics.median(_around(lat, 60) for lat in latency[name])
        early = statistics.median(_around(lat, 5) for lat in latency[name])
        rows.append((f"{name}: latency token 60 / token 5", late, early, late / early, GOALS["latency"]))
    print("tokens/s end to end: " + ", ".join(f"{k} {NEW / v:.1f}" for k, v in t.items()))
    print("tokens/s decoding:   " + ", ".join(f"{k} {1 / v:.1f}" for k, v in d.items()))
    return rows


def training_rows() -> list[tuple[str, float, float, float, float | None]]:
    """Forward + backward (logits' upstream gradient given) of a 2-layer GPT-2 against HF on torch."""
    import torch  # noqa: PLC0415

    config = gpt2.GPT2Config(n_layer=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = _hf(config)
    params = gpt2.params_from_hf(hf.state_dict(), config)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, config.vocab_size, (2, 64))
    upstream = rng.standard_normal((2, 64, config.vocab_size)).astype(np.float32)
    backend = ml.backend("torch", dtype=ml.float32)
    compiled = ml.compile(gpt2.gpt2(config), backend, shapes={"input_ids": list(ids.shape)})
    weights = {k: backend.array(v) for k, v in params.items()}
    inputs, grads = {"input_ids": backend.array(ids)}, {"logits": backend.array(upstream)}
    hf_ids, hf_upstream = torch.tensor(ids), torch.tensor(upstream)

    def mithril_step() -> None:
        compiled.evaluate(weights, inputs, grads)

    def hf_step() -> None:
        hf.zero_grad(set_to_none=True)
        hf(hf_ids).logits.backward(hf_upstream)

    c, r, ratio = compare(mithril_step, hf_step, rounds=5, min_time=0.5)
    return [("2-layer forward+backward, batch 2 x 64", c, r, ratio, GOALS["train"])]


MEMORY_SIDES = ("hf", "torch", "ggml f32", "ggml int8", "ggml int4")


def memory_worker(side: str, layers: int) -> dict[str, float]:
    """In a fresh process: peak resident MB after holding the weights, and after one generate call on `side`."""
    import torch  # noqa: PLC0415

    def peak_mb() -> float:
        """This process's peak resident MB (Linux's VmHWM: unlike ru_maxrss, not inherited across fork and exec)."""
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024

    config = gpt2.GPT2Config(n_layer=layers, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = _hf(config)
    params = gpt2.params_from_hf(hf.state_dict(), config)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, PROMPT))
    before = peak_mb()
    if side == "hf":
        with torch.no_grad():
            hf.generate(
                torch.tensor(ids), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                attention_mask=torch.ones_like(torch.tensor(ids)), pad_token_id=0,
            )  # fmt: skip
    else:
        quantize = {"ggml int8": "int8", "ggml int4": "int4"}.get(side)
        backend = ml.backend("torch", dtype=ml.float32) if side == "torch" else ml.GGMLBackend(quantize=quantize)
        gpt2.generate(backend, config, params, ids, max_new_tokens=NEW)
    return {"weights": before, "peak": peak_mb()}


def memory_rows(layers: int) -> list[tuple[str, float, float]]:
    """(side, MB above the weights at the peak of one generate call, peak MB), each side in its own process."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    rows = []
    for side in MEMORY_SIDES:
        command = [sys.executable, __file__, "--memory-worker", side, "--layers", str(layers)]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        rows.append((side, result["peak"] - result["weights"], result["peak"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 layers instead of GPT-2 small's 12")
    parser.add_argument("--runs", type=int, default=5, help="generate calls per side (medians)")
    parser.add_argument("--memory-worker", choices=MEMORY_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        import json  # noqa: PLC0415

        print(json.dumps(memory_worker(args.memory_worker, args.layers)))
        return
    layers = 2 if args.small else 12
    config = gpt2.GPT2Config(n_layer=layers, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    print(f"GPT-2 n_layer {layers}, n_embd 768, n_head 12, vocab 50257; batch 1, prompt {PROMPT}, {NEW} new tokens")
    rows = generation_rows(config, args.runs)
    print_table(f"Generation ({layers} layers): ratio = Mithril / reference seconds per token", rows)
    print_table("Training step (2 layers): ratio = Mithril / HF seconds", training_rows())
    print(f"\nPeak memory of one generate call ({layers} layers), each side in a fresh process holding the weights")
    for side, extra, peak in memory_rows(layers):
        print(f"{side:<12} {extra:>8.0f} MB above the weights   (peak {peak:.0f} MB)")


if __name__ == "__main__":
    main()
