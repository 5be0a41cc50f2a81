"""Copies GGML avoids, with the same numbers: large float32 inputs are read where the caller's array lies (only
when ggml merely reads them; every other input is copied in), and ops that read strides read views, not copies."""

from __future__ import annotations

import ctypes

import ggml.ggml as G
import numpy as np
import pytest

import mithril as ml
from mithril.models import Concat, Index, Linear, Model
from mithril_ggml import lowering


def _model() -> Model:
    """The cache pattern of a generation step: drop the oldest row of a large input, append a new one."""
    model = Model()
    model |= Index[:, 1:](input="past", output="kept")
    model |= Linear(dimension=256)(input="x", output="new")
    model |= Concat(2, dim=1)(input0="kept", input1="new", output="present")
    model |= Linear(dimension=8)(input="present", output="output")
    return model


@pytest.mark.parametrize("shapes", [True, False], ids=["static", "symbolic"])
def test_large_inputs_read_in_place_give_the_copied_numbers(shapes: bool) -> None:
    rows = 80  # [1, 80, 256] float32: 80 KB, above IN_PLACE_INPUT_BYTES
    assert rows * 256 * 4 >= lowering.IN_PLACE_INPUT_BYTES
    given = {"past": [1, rows, 256], "x": [1, 1, 256]}
    compiled = ml.compile(
        _model(), ml.GGMLBackend(), shapes=given if shapes else {"x": [None, None, 256]}, outputs=["present", "output"]
    )
    reference = ml.compile(_model(), ml.backend("numpy", dtype=ml.float32), given, outputs=["present", "output"])
    rng = np.random.default_rng(0)
    params = reference.randomize_params(seed=0)
    past = rng.standard_normal((1, rows, 256)).astype(np.float32)
    x = rng.standard_normal((1, 1, 256)).astype(np.float32)
    for value in (
        past,  # in place
        past[:, ::-1],  # strided: copied
        np.asfortranarray(past),  # another layout: copied
        ml.GGMLBackend().frozen(past),  # an ndarray subclass: copied
        past + 1.0,  # in place again, at another address
    ):
        got = compiled.evaluate(params, {"past": value, "x": x})
        want = reference.evaluate(params, {"past": value.astype(np.float32), "x": x})
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)
        assert not np.shares_memory(got["present"], value)  # outputs are copies, never the caller's memory
    program = lowering.program_of(compiled, "test")
    instances = [inst for store in program._stores.values() for inst in store.instances.values()]
    assert [m is not None for inst in instances for m in inst.in_place] == [True, False]  # past, not x
    past[0, 5] = 9.0  # written between calls: the next call reads the new values
    got = compiled.evaluate(params, {"past": past, "x": x})
    want = reference.evaluate(params, {"past": past, "x": x})
    np.testing.assert_allclose(got["output"], want["output"], rtol=1e-5, atol=1e-5)


def test_an_input_that_a_node_writes_into_is_copied_not_read_in_place() -> None:
    ctx = G.ggml_init(G.ggml_init_params(mem_size=16 * G.ggml_tensor_overhead() + (1 << 20), no_alloc=True))
    try:
        big = G.ggml_new_tensor_1d(ctx, G.GGML_TYPE_F32, 1 << 15)
        small = G.ggml_new_tensor_1d(ctx, G.GGML_TYPE_F32, 4)
        read = G.ggml_new_tensor_1d(ctx, G.GGML_TYPE_F32, 1 << 15)
        graph = G.ggml_new_graph(ctx)
        G.ggml_build_forward_expand(graph, G.ggml_add_inplace(ctx, big, big))  # writes into big's memory
        G.ggml_build_forward_expand(graph, G.ggml_sum(ctx, G.ggml_reshape_2d(ctx, read, 1 << 7, 1 << 8)))
        G.ggml_build_forward_expand(graph, G.ggml_sum(ctx, small))
        written, viewed, tiny = lowering._readable_in_place(graph, [big, read, small])
        assert written is None and tiny is None
        assert viewed is not None and [ctypes.addressof(t.contents) for t, _ in viewed.views][0] == ctypes.addressof(
            read.contents
        )
        assert len(viewed.views) == 2  # the tensor and its reshape move together
    finally:
        G.ggml_free(ctx)


def _graph_ops(compiled: ml.CompiledModel) -> list[str]:
    """The ggml op of every node of a static model's forward graph."""
    program = lowering.program_of(compiled, "test")
    (inst,) = [inst for store in program._stores.values() for inst in store.instances.values()]
    nodes = (G.ggml_graph_node(inst.graph, i) for i in range(G.ggml_graph_n_nodes(inst.graph)))
    return [G.ggml_op_name(node.contents.op).decode() for node in nodes]


def test_attention_scores_read_keys_by_stride_without_copies() -> None:
    """q @ k.transpose(-1, -2) over heads: the keys are split into heads and transposed twice on the way (once by
    the model, once by the matrix product), and each of those was a copy; now none is."""
    from mithril.models import MatMul, Reshape, Transpose

    model = Model()
    model |= Reshape((1, 20, 4, 16))(input="keys", output="heads")  # [B, S, H, D]
    model |= Transpose((0, 2, 3, 1))(input="heads", output="keys_t")  # [B, H, D, S]
    model |= MatMul()(left="q", right="keys_t", output="scores")  # [B, H, 1, D] @ [B, H, D, S]
    shapes = {"keys": [1, 20, 64], "q": [1, 4, 1, 16]}
    compiled = ml.compile(model, ml.GGMLBackend(), shapes=shapes, inference=True)
    rng = np.random.default_rng(1)
    keys, q = rng.standard_normal((1, 20, 64)).astype(np.float32), rng.standard_normal((1, 4, 1, 16)).astype(np.float32)
    got = compiled.evaluate({}, {"keys": keys, "q": q})["scores"]
    want = q @ keys.reshape(1, 20, 4, 16).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _graph_ops(compiled).count("CONT") == 0
