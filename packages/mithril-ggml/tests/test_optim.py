"""ml.optim on GGML's arrays (host NumPy arrays): the NumPy list-wise math, the NumPy backend's numbers."""

from __future__ import annotations

import numpy as np

import mithril as ml
from mithril.optim import NamespaceForeach


def test_ggml_optimizers_run_on_numpy_math_and_match_the_numpy_backend() -> None:
    ggml_ops = ml.optim.foreach_ops(ml.GGMLBackend())
    assert isinstance(ggml_ops, NamespaceForeach) and ggml_ops.xp is np
    numpy_ops = ml.optim.foreach_ops(ml.NumpyBackend(dtype=ml.float32))
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32)}
    grads = {"w": rng.standard_normal((3, 4)).astype(np.float32)}
    opt = ml.optim.Adam(lr=0.1, amsgrad=True)
    ours = opt.update(params, grads, opt.init(params, ggml_ops), step=1, ops=ggml_ops)
    reference = opt.update(params, grads, opt.init(params, numpy_ops), step=1, ops=numpy_ops)
    assert ours[0]["w"].dtype == np.float32
    np.testing.assert_array_equal(ours[0]["w"], reference[0]["w"])
