"""NumPy backend: gradients against finite differences, the quick start, helpers and errors."""

from __future__ import annotations

import copy as copy_module
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mithril as ml
from mithril.models import Linear, Model
from mithril.primitives import joint_graph
from mithril.testing import CASES, PRIMITIVE_CASES, Case, finite_difference
from mithril.testing.models import quickstart_mlp
from mithril_numpy import lowering


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradients_match_finite_differences(case: Case) -> None:
    finite_difference(case, ml.NumpyBackend(dtype=ml.float64))


def test_quickstart_numpy_section_runs_as_written() -> None:
    numpy_backend = ml.NumpyBackend(dtype=ml.float32)
    numpy_model = ml.compile(model=quickstart_mlp(), backend=numpy_backend, shapes={"input": [32, 20]})
    numpy_params = {k: numpy_backend.array(v) for k, v in numpy_model.randomize_params().items()}
    numpy_inputs = {"input": numpy_backend.randn(32, 20)}
    numpy_outputs = numpy_model.evaluate(numpy_params, numpy_inputs)
    assert numpy_outputs["output"].shape == (32, 10)
    assert numpy_outputs["output"].dtype == np.float32


def test_mlp_gradients_match_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
    params = compiled.randomize_params(seed=3)
    x, g = backend.randn(32, 20), backend.randn(32, 10)
    out, grads = compiled.evaluate(params, {"input": x}, {"output": g})
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    h = torch.relu(torch.nn.functional.linear(torch.tensor(x), tp["linear_0.weight"], tp["linear_0.bias"]))
    ty = torch.nn.functional.linear(h, tp["linear_1.weight"], tp["linear_1.bias"])
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(out["output"], ty.detach().numpy(), rtol=1e-12)
    for key, tensor in tp.items():
        np.testing.assert_allclose(grads[key], tensor.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_randomize_params_follows_torch_default_bounds_and_seed() -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
    a, b = compiled.randomize_params(seed=7), compiled.randomize_params(seed=7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    bound = 1 / np.sqrt(20)
    w = a["linear_0.weight"]
    assert w.shape == (64, 20) and np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(a["linear_1.bias"]).max() <= 1 / np.sqrt(64)


def test_training_reduces_loss() -> None:
    backend = ml.NumpyBackend(dtype=ml.float32)
    backend.set_seed(0)
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
    params = compiled.randomize_params()
    X, W = backend.randn(320, 20), backend.randn(20, 10)
    Y = backend.matmul(X, W)
    losses = []
    for _ in range(5):
        total = 0.0
        for i in range(10):
            xb, yb = X[i * 32 : (i + 1) * 32], Y[i * 32 : (i + 1) * 32]
            out, grads = compiled.evaluate(params, {"input": xb}, {"output": np.zeros_like(yb)})
            diff = out["output"] - yb
            total += float(backend.mean(diff * diff))
            _, grads = compiled.evaluate(params, {"input": xb}, {"output": 2 * diff / diff.size})
            params = {k: params[k] - 0.05 * grads[k] for k in params}
        losses.append(total / 10)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_helpers_and_seeded_rng() -> None:
    backend = ml.NumpyBackend(dtype=ml.float64)
    backend.set_seed(5)
    a = backend.randn(3, 4)
    backend.set_seed(5)
    np.testing.assert_array_equal(a, backend.randn(3, 4))
    assert backend.rand(2).dtype == np.float64 and backend.ones(2, 3).shape == (2, 3)
    assert backend.array([1.0, 2.0]).dtype == np.float64
    assert backend.array(np.arange(3)).dtype.kind == "i"
    assert float(backend.sum(backend.ones(2, 2))) == 4.0
    f16 = ml.NumpyBackend(dtype=ml.float16)
    assert f16.randn(2, 2).dtype == np.float16


def test_backend_argument_errors() -> None:
    with pytest.raises(TypeError, match="bfloat16 is not supported"):
        ml.NumpyBackend(dtype=ml.bfloat16)
    with pytest.raises(ValueError, match="cpu"):
        ml.NumpyBackend(device="cuda")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['jit'\]"):
        ml.NumpyBackend(jit=True)
    with pytest.raises(ml.UnsupportedError, match="no JIT"):
        ml.compile(quickstart_mlp(), ml.NumpyBackend(), jit=True)


class TestEvaluateErrors:
    """Each bad call names the key and expected vs given, and the model keeps working."""

    @pytest.fixture()
    def setup(self) -> tuple[ml.CompiledModel, dict, dict]:
        backend = ml.NumpyBackend()
        compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [32, 20]})
        return compiled, compiled.randomize_params(seed=0), {"input": backend.randn(32, 20)}

    @pytest.mark.parametrize(
        "mutate, error, pattern",
        [
            (
                lambda p, x: (p, {"inputs": x["input"]}),
                ml.KeyNotFoundError,
                "missing key 'input'.*did you mean 'inputs'",
            ),  # noqa: E501
            (
                lambda p, x: (p, {"input": x["input"][:, :5]}),
                ml.ShapeError,
                r"inputs\['input'\].*\[32, 20\], got \[32, 5\]",
            ),  # noqa: E501
            (lambda p, x: ({**p, "extra": p["linear_0.bias"]}, x), ml.KeyNotFoundError, "unknown key 'extra'"),  # noqa: E501
            (
                lambda p, x: ({k: v for k, v in p.items() if "bias" not in k}, x),
                ml.KeyNotFoundError,
                "missing key 'linear_0.bias'",
            ),  # noqa: E501
            (
                lambda p, x: ({**p, "linear_1.bias": p["linear_1.bias"][:1]}, x),
                ml.ShapeError,
                r"linear_1.bias.*\[10\], got \[1\]",
            ),  # noqa: E501
            (lambda p, x: (p, {"input": x["input"].astype(np.float64)}), ml.DTypeMismatchError, "float32.*got float64"),  # noqa: E501
            (lambda p, x: (p, {"input": x["input"].tolist()}), TypeError, "expected an array"),  # noqa: E501
            (lambda p, x: ({**p, "input": x["input"]}, {}), ml.KeyNotFoundError, "'input' belongs in inputs"),  # noqa: E501
        ],
    )
    def test_bad_inputs(self, setup, mutate, error, pattern) -> None:  # type: ignore[no-untyped-def]
        compiled, params, inputs = setup
        bad_params, bad_inputs = mutate(params, inputs)
        with pytest.raises(error, match=pattern):
            compiled.evaluate(bad_params, bad_inputs)
        assert compiled.evaluate(params, inputs)["output"].shape == (32, 10)

    def test_bad_output_gradients(self, setup) -> None:  # type: ignore[no-untyped-def]
        compiled, params, inputs = setup
        with pytest.raises(ml.ShapeError, match=r"output_gradients\['output'\].*\[32, 10\].*got \[32, 9\]"):
            compiled.evaluate(params, inputs, {"output": np.ones((32, 9), np.float32)})
        with pytest.raises(ml.KeyNotFoundError, match="'outptu'"):
            compiled.evaluate(params, inputs, {"outptu": np.ones((32, 10), np.float32)})
        _, grads = compiled.evaluate(params, inputs, {"output": np.ones((32, 10), np.float32)})
        assert list(grads) == list(params)

    def test_inference_model_refuses_gradients(self) -> None:
        backend = ml.NumpyBackend()
        compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [2, 3]}, inference=True)
        with pytest.raises(ml.UnsupportedError, match="inference only"):
            compiled.evaluate(
                compiled.randomize_params(), {"input": backend.randn(2, 3)}, {"output": backend.ones(2, 10)}
            )


def test_generated_code_is_readable_and_written_to_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mlp.py"
    compiled = ml.compile(quickstart_mlp(), ml.NumpyBackend(), shapes={"input": [32, 20]}, file_path=str(path))
    assert "def forward(params, inputs):" in compiled.code
    # ReLU's gradient reads its own output, so the linear layer's output is used once and inlined
    assert "relu_0_output = np.maximum((input @ linear_0_weight.T + linear_0_bias), 0)" in compiled.code
    assert path.read_text() == compiled.code
    assert "def forward_backward(params, inputs, output_gradients):" in path.read_text()  # written at compile


def test_gradients_are_generated_once_at_the_first_gradient_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """ml.compile and forward calls build no backward pass; 8 threads asking at once build it exactly once."""
    builds = []
    monkeypatch.setattr(lowering, "joint_graph", lambda *args: builds.append(args) or joint_graph(*args))
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [4, 20]})
    params = compiled.randomize_params(seed=0)
    x = {"input": backend.randn(4, 20)}
    out = compiled.evaluate(params, x)["output"]
    assert not builds
    seeds = {"output": np.ones_like(out)}
    start = threading.Barrier(8)

    def call(_: int) -> dict[str, np.ndarray]:
        start.wait()
        return compiled.evaluate(params, x, seeds)[1]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert len(builds) == 1
    for grads in results[1:]:
        assert all(np.array_equal(grads[k], results[0][k]) for k in params)
    assert "def forward_backward(params, inputs, output_gradients):" in compiled.code
    assert len(builds) == 1


def test_code_shows_gradients_before_any_gradient_call_and_copies_still_work() -> None:
    """`code` shows the whole source before any gradient call; the compiled model still pickles and deep-copies."""
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(quickstart_mlp(), backend, shapes={"input": [4, 20]})
    assert "def forward_backward(params, inputs, output_gradients):" in compiled.code
    params = compiled.randomize_params(seed=0)
    x = {"input": backend.randn(4, 20)}
    seeds = {"output": backend.ones(4, 10)}
    expected = compiled.evaluate(params, x, seeds)[1]
    for copy in (pickle.loads(pickle.dumps(compiled)), copy_module.deepcopy(compiled)):
        grads = copy.evaluate(params, x, seeds)[1]
        assert all(np.array_equal(grads[k], expected[k]) for k in params)


def test_a_model_without_a_gradient_rule_is_refused_at_compile() -> None:
    """The backward pass is built at the first gradient call, but what it could not build is refused at compile."""
    case = next(c for c in PRIMITIVE_CASES if c.primitive == "avg_pool_grad")
    backend = ml.NumpyBackend(dtype=ml.float64)
    with pytest.raises(ml.UnsupportedError, match=r"primitive 'avg_pool_grad' \(used by 'operator'\) has no gradient"):
        ml.compile(case.build(), backend, shapes=case.shapes, trainable_keys=["input"])
    ml.compile(case.build(), backend, shapes=case.shapes, trainable_keys=["input"], inference=True)


def test_gradients_for_a_subset_of_outputs() -> None:
    model = Model()
    model |= Linear(3)(input="input", output="a")
    model |= Linear(2)(input="input", output="b")
    backend = ml.NumpyBackend(dtype=ml.float64)
    compiled = ml.compile(model, backend, shapes={"input": [4, 5]}, outputs=["a", "b"])
    params = compiled.randomize_params(seed=0)
    x = backend.randn(4, 5)
    _, grads = compiled.evaluate(params, {"input": x}, {"b": backend.ones(4, 2)})
    assert not grads["linear_0.weight"].any()
    np.testing.assert_allclose(grads["linear_1.bias"], np.full(2, 4.0))


def test_dropout_training_and_inference() -> None:
    from mithril.models import Dropout

    model = Model()
    model |= Linear(50)
    model += Dropout(0.3)
    backend = ml.NumpyBackend(dtype=ml.float64)
    train = ml.compile(model, backend, shapes={"input": [2, 40]})
    params = train.randomize_params(seed=0)
    x = {"input": backend.randn(2, 40)}
    backend.set_seed(4)
    a = train.evaluate(params, x)["output"]
    backend.set_seed(4)
    np.testing.assert_array_equal(a, train.evaluate(params, x)["output"])
    assert abs((a == 0).mean() - 0.3) < 0.15
    full = ml.compile(model, backend, shapes={"input": [2, 40]}, inference=True)
    dense = full.evaluate(params, x)["output"]
    kept = a != 0
    np.testing.assert_allclose(a[kept], dense[kept] / 0.7)
    assert dense.shape == (2, 50)
    with pytest.raises(ml.KeyNotFoundError, match="'dropout_0.mask'"):
        ml.compile(model, backend, shapes={"input": [2, 40]}, inference=True, outputs=["dropout_0.mask"])


def test_compile_options_are_type_checked() -> None:
    """(static_inference itself is checked on every backend by the conformance kit.)"""
    backend = ml.NumpyBackend()
    with pytest.raises(TypeError, match=r"option 'static_inference' must be bool, got 'yes' \(str\)"):
        ml.compile(quickstart_mlp(), backend, static_inference="yes")
