"""`ml.Trainer.step` (forward, CrossEntropyLoss, backward, Adam) against a hand-written step per framework.

References: torch, torch.optim.Adam(foreach=True) + autograd; JAX, one jax.jit of value_and_grad
and a hand-written Adam; NumPy, the MLP's forward, backward and Adam written by hand. Quick start
MLP (20-64-10) and CNN (3x32x32, BatchNorm in training mode), batch 32, float32. Also the time to
97% test accuracy on scikit-learn's digits. Run: python benchmarks/bench_training.py [backend ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import compare, print_table  # noqa: E402

import mithril as ml  # noqa: E402
from mithril.models import CrossEntropyLoss  # noqa: E402
from mithril.testing.models import quickstart_cnn, quickstart_mlp  # noqa: E402

Row = tuple[str, float, float, float, float | None]
TARGETS = {"numpy": 1.15, "torch": 1.05, "jax": 1.05}
BETAS, EPS, LR = (0.9, 0.999), 1e-8, 1e-3


def _trainer(backend_name: str, model: Any, shape: list[int]) -> tuple[Any, Any, dict[str, Any]]:
    backend = ml.backend(backend_name, dtype=ml.float32)
    trainer = ml.Trainer(
        model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(lr=LR), shapes={"input": shape}
    )
    rng = np.random.default_rng(0)
    batch = {
        "input": backend.array(rng.standard_normal(shape).astype(np.float32)),
        "target": backend.array(rng.integers(0, 10, shape[0])),
    }
    return trainer, trainer.init(seed=0), batch


def _adam(
    xp: Any, params: dict[str, Any], grads: dict[str, Any], m: dict[str, Any], v: dict[str, Any], t: Any
) -> tuple[Any, ...]:
    """Adam as torch computes it, on dicts of arrays of the array module `xp`."""
    b1, b2 = BETAS
    new_p, new_m, new_v = {}, {}, {}
    c1, c2 = 1 - b1**t, xp.asarray(1 - b2**t)
    for k in params:
        new_m[k] = b1 * m[k] + (1 - b1) * grads[k]
        new_v[k] = b2 * v[k] + (1 - b2) * grads[k] * grads[k]
        new_p[k] = params[k] - (LR / c1) * new_m[k] / (xp.sqrt(new_v[k]) / xp.sqrt(c2) + EPS)
    return new_p, new_m, new_v


# -- NumPy ---------------------------------------------------------------------------------------
def numpy_rows() -> list[Row]:
    """MLP step: the hand-written forward, softmax cross-entropy (its value too, as the trainer reports it),
    backward and Adam in NumPy."""
    trainer, state, batch = _trainer("numpy", quickstart_mlp(), [32, 20])
    params = {k: v.copy() for k, v in state.params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    x, y = batch["input"], batch["target"]
    onehot, rows = np.eye(10, dtype=np.float32)[y], np.arange(len(y))
    hand_state, hand_loss = [params, m, v, 0], [None]

    def hand_step() -> None:
        p, m_, v_, t = hand_state
        h = x @ p["linear_0.weight"].T + p["linear_0.bias"]
        a = np.maximum(h, 0)
        z = a @ p["linear_1.weight"].T + p["linear_1.bias"]
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        hand_loss[0] = (np.log(total[:, 0]) - shifted[rows, y]).mean()  # the loss the trainer reports too
        g = (e / total - onehot) / len(x)
        da = (g @ p["linear_1.weight"]) * (h > 0)
        grads = {
            "linear_1.weight": g.T @ a,
            "linear_1.bias": g.sum(0),
            "linear_0.weight": da.T @ x,
            "linear_0.bias": da.sum(0),
        }
        hand_state[:3] = _adam(np, p, grads, m_, v_, t + 1)
        hand_state[3] = t + 1

    box = [state]

    def ours() -> None:
        box[0] = trainer.step(box[0], batch)[0]

    return [("MLP 20-64-10, batch 32: train step (Adam)", *compare(ours, hand_step), TARGETS["numpy"])]


# -- torch ---------------------------------------------------------------------------------------
def torch_rows() -> list[Row]:
    """MLP and CNN steps against torch.nn + torch.optim.Adam(foreach=True) + autograd."""
    import torch

    rows = []
    for name, model, shape, net in [
        ("MLP 20-64-10, batch 32", quickstart_mlp(), [32, 20],
         torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))),
        ("CNN 3x32x32, batch 32", quickstart_cnn(), [32, 3, 32, 32], _torch_cnn(torch)),
    ]:  # fmt: skip
        trainer, state, batch = _trainer("torch", model, shape)
        opt = torch.optim.Adam(net.parameters(), lr=LR, foreach=True)
        x, y = batch["input"], batch["target"]

        def hand_step(net: Any = net, opt: Any = opt, x: Any = x, y: Any = y) -> None:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        box = [state]

        def ours(trainer: Any = trainer, batch: Any = batch, box: Any = box) -> None:
            box[0] = trainer.step(box[0], batch)[0]

        rows.append((f"{name}: train step (Adam)", *compare(ours, hand_step), TARGETS["torch"]))
    return rows


def torch_jit_rows() -> list[Row]:
    """trainer.step with jit=True (torch.compile of the step's graph) against the eager default, no target:
    jit is an option for where it pays off, not the default. The first call's compile time is printed."""
    rows = []
    for name, model, shape in [("MLP 20-64-10, batch 32", quickstart_mlp(), [32, 20]),
                               ("CNN 3x32x32, batch 32", quickstart_cnn(), [32, 3, 32, 32])]:  # fmt: skip
        steps = []
        for jit in (True, False):
            backend = ml.backend("torch", dtype=ml.float32)
            trainer = ml.Trainer(model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(lr=LR),
                                 shapes={"input": shape}, jit=jit)  # fmt: skip
            batch = _trainer("torch", model, shape)[2]
            start = time.perf_counter()
            box = [trainer.step(trainer.init(seed=0), batch)[0]]
            print(f"torch {name}, jit={jit}: first step {time.perf_counter() - start:.2f} s")

            def step(trainer: Any = trainer, batch: Any = batch, box: Any = box) -> None:
                box[0] = trainer.step(box[0], batch)[0]

            steps.append(step)
        rows.append((f"{name}: jit=True vs eager step", *compare(steps[0], steps[1], rounds=3), None))
    return rows


def _torch_cnn(torch: Any) -> Any:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


# -- JAX -----------------------------------------------------------------------------------------
def jax_rows() -> list[Row]:
    """MLP and CNN steps against one hand-written jax.jit of value_and_grad and Adam."""
    import jax
    import jax.numpy as jnp
    from bench_jax import cnn, mlp

    def mlp_logits(p: Any, x: Any, s: Any) -> tuple[Any, Any]:
        return mlp(p, x), s

    rows = []
    for name, model, shape, logits_fn in [
        ("MLP 20-64-10, batch 32", quickstart_mlp(), [32, 20], mlp_logits),
        ("CNN 3x32x32, batch 32", quickstart_cnn(), [32, 3, 32, 32], cnn),
    ]:
        trainer, state, batch = _trainer("jax", model, shape)
        x, y = batch["input"], batch["target"]

        @jax.jit
        def hand(p: Any, m: Any, v: Any, s: Any, t: Any, x: Any = x, y: Any = y, logits_fn: Any = logits_fn) -> Any:
            def loss(p: Any) -> Any:
                z, new_s = logits_fn(p, x, s)
                logp = jax.nn.log_softmax(z, axis=1)
                return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), new_s

            (_, new_s), grads = jax.value_and_grad(loss, has_aux=True)(p)
            return (*_adam(jnp, p, grads, m, v, t), new_s)

        zeros = {k: jnp.zeros_like(a) for k, a in state.params.items()}
        hand_state = [state.params, zeros, zeros, state.model_state, 0]

        def hand_step(hand: Any = hand, hand_state: Any = hand_state) -> None:
            p, m, v, s, t = hand_state
            hand_state[:4] = hand(p, m, v, s, t + 1)
            hand_state[4] = t + 1
            jax.block_until_ready(hand_state[0])

        box = [state]

        def ours(trainer: Any = trainer, batch: Any = batch, box: Any = box) -> None:
            box[0] = trainer.step(box[0], batch)[0]
            jax.block_until_ready(box[0].params)

        rows.append((f"{name}: train step (Adam)", *compare(ours, hand_step, rounds=7), TARGETS["jax"]))
    return rows


def digits_rows(backend_name: str) -> list[tuple[str, float, int]]:
    """Seconds (and epochs) of fit to 97% test accuracy on scikit-learn's digits: MLP 64-64-10, Adam 1e-2, batch 32."""
    from sklearn.datasets import load_digits

    from mithril.models import Linear, Model, Relu

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype(np.float32), y[order]
    model = Model()
    model |= Linear(dimension=64)(input="input")
    model += Relu()
    model += Linear(dimension=10)
    backend = ml.backend(backend_name, dtype=ml.float32)
    trainer = ml.Trainer(model, backend, loss=CrossEntropyLoss(), optimizer=ml.optim.Adam(lr=1e-2),
                         metrics=["accuracy"], shapes={"input": [None, 64]})  # fmt: skip
    state = trainer.init(seed=0)
    start, epochs = time.perf_counter(), 0
    while epochs < 50:
        state, _ = trainer.fit(state, (x[:1500], y[:1500]), epochs=1, batch_size=32, seed=epochs, progress=False)
        epochs += 1
        if trainer.evaluate(state, (x[1500:], y[1500:]))["accuracy"] >= 0.97:
            break
    return [(f"digits to 97% test accuracy ({backend_name})", time.perf_counter() - start, epochs)]


ROWS = {"numpy": numpy_rows, "torch": torch_rows, "jax": jax_rows}


def main() -> None:
    names = sys.argv[1:] or [b for b in ROWS if b in ml.available_backends()]
    for name in names:
        print_table(f"ml.Trainer.step vs hand-written ({name}, float32, CPU)", ROWS[name]())
        if name == "torch":
            print_table("ml.Trainer.step, torch.compile against eager (torch, float32, CPU)", torch_jit_rows())
        for case, seconds, epochs in digits_rows(name):
            print(f"{case:<44} {seconds:>9.2f} s  ({epochs} epochs)")


if __name__ == "__main__":
    main()
