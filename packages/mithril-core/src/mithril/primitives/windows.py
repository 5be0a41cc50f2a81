"""N-d sliding windows: convolution and pooling over the last n = len(stride) axes, with their gradient forms."""

from __future__ import annotations

import math
from typing import Any, Optional

from ..models import rules
from .builder import Applied, Builder
from .declaration import VJP, Attrs, Port, Primitive, Template, declare
from .examples import Example

CONV_ATTRS = {"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
MAX_POOL_ATTRS = {"kernel_size": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False}
AVG_POOL_ATTRS = {
    "kernel_size": (1, 1),
    "stride": (1, 1),
    "padding": (0, 0),
    "ceil_mode": False,
    "count_include_pad": True,
    "divisor_override": None,
}
LIKE_OUTPUT: Template = {"input": ["...g"], "like": ["...l"], "output": ["...l"]}

# Conv geometries: (name, input, weight, output shapes, attributes); the gradient forms reuse them.
_S2, _P1 = (2, 2), (1, 1)
_3D = {"stride": (1, 1, 1), "padding": (0, 1, 0), "dilation": (1, 1, 1)}
CONV_GEOMETRIES: tuple[tuple[str, tuple[int | None, ...], tuple[int, ...], tuple[int | None, ...], Attrs], ...] = (
    ("", (2, 3, 5, 5), (4, 3, 3, 3), (2, 4, 5, 5), {"padding": _P1}),
    ("strided", (2, 2, 7, 6), (4, 2, 3, 2), (2, 4, 4, 2), {"stride": _S2, "padding": (1, 0), "dilation": (1, 2)}),
    ("groups", (1, 4, 5, 5), (6, 2, 3, 3), (1, 6, 3, 3), {"groups": 2}),
    ("1d", (2, 4, 9), (6, 2, 3), (2, 6, 4), {"stride": (2,), "padding": (1,), "dilation": (2,), "groups": 2}),
    ("3d", (1, 2, 3, 4, 3), (2, 2, 2, 2, 2), (1, 2, 2, 5, 2), _3D),
    ("symbolic", (None, 2, 5, 5), (3, 2, 3, 3), (None, 3, 3, 3), {}),
)
# NaN and ±inf go into the data, not the kernel: zero padding times an infinite weight is NaN in
# torch's CPU kernels, while XLA skips padded cells (see Example.nonfinite).
CONV_EXAMPLES = tuple(
    Example(
        {"input": x, "weight": w, **({"bias": (w[0],)} if name != "groups" else {})},
        {**attrs, "kernel_size": w[2:]},
        name=name,
        nonfinite=("input", "bias") if name != "groups" else ("input",),
    )
    for name, x, w, _, attrs in CONV_GEOMETRIES
)
# Gradient forms are checked forward: their gradients are checked through conv's.
CONV_INPUT_GRAD_EXAMPLES = tuple(
    Example({"input": y, "weight": w, "like": x}, attrs, grads=False, name=name, nonfinite=("input",))
    for name, x, w, y, attrs in CONV_GEOMETRIES
)
CONV_WEIGHT_GRAD_EXAMPLES = tuple(
    Example({"input": y, "data": x, "like": w}, attrs, grads=False, name=name, nonfinite=("data",))
    for name, x, w, y, attrs in CONV_GEOMETRIES
)
# Pool geometries: (name, input shape, output shape, attributes, domain); "ties" puts many maxima in a window.
_K3S2P1 = {"kernel_size": (3, 3), "stride": _S2, "padding": _P1, "ceil_mode": True}
_ONE_D = {"kernel_size": (3,), "stride": (2,), "padding": (1,)}
_TILES = {"kernel_size": _S2, "stride": _S2}
_DILATED = {"kernel_size": (2, 3), "stride": (1, 2), "dilation": (2, 1)}
PoolGeometry = tuple[str, tuple[Optional[int], ...], tuple[Optional[int], ...], dict[str, Any], dict[str, str]]
POOL_EXAMPLES: dict[str, tuple[PoolGeometry, ...]] = {
    "max_pool": (
        ("", (2, 3, 4, 4), (2, 3, 2, 2), _TILES, {}),
        ("padded_ceil", (1, 2, 6, 5), (1, 2, 4, 3), _K3S2P1, {}),
        ("dilated", (2, 1, 7, 8), (2, 1, 5, 3), _DILATED, {}),
        ("1d", (2, 3, 7), (2, 3, 4), {**_ONE_D, "dilation": (1,)}, {}),
        ("ties", (1, 2, 5, 5), (1, 2, 4, 4), {"kernel_size": _S2, "stride": (1, 1)}, {"input": "ties"}),
        ("symbolic", (None, 2, 4, 4), (None, 2, 2, 2), _TILES, {}),
    ),
    "avg_pool": (
        ("", (2, 3, 4, 4), (2, 3, 2, 2), _TILES, {}),
        ("padded_ceil", (1, 2, 6, 5), (1, 2, 4, 3), _K3S2P1, {}),
        ("exclusive", (1, 2, 6, 5), (1, 2, 4, 3), {**_K3S2P1, "count_include_pad": False}, {}),
        ("divisor", (1, 2, 5, 5), (1, 2, 4, 4), {"kernel_size": _S2, "stride": (1, 1), "divisor_override": 3}, {}),
        ("1d", (2, 3, 7), (2, 3, 4), _ONE_D, {}),
        ("symbolic", (None, 2, 4, 4), (None, 2, 2, 2), _TILES, {}),
    ),
}


def _pool_examples(name: str) -> tuple[Example, ...]:
    return tuple(
        Example({"input": x}, attrs, domain=domain, smooth=not domain, name=case)
        for case, x, _, attrs, domain in POOL_EXAMPLES[name]
    )


def _like(domain: dict[str, str]) -> dict[str, str]:
    """The pool input's domain, given to the gradient form's `like`."""
    return {"like": domain["input"]} if domain else {}


def _pool_grad_examples(name: str) -> tuple[Example, ...]:
    return tuple(
        Example({"input": y, "like": x}, attrs, domain=_like(domain), grads=False, name=case)
        for case, x, y, attrs, domain in POOL_EXAMPLES[name]
    )


def _spatial(attrs: Attrs, prefix: str) -> list[str | int | None]:
    return [f"{prefix}{i}" for i in range(len(attrs["stride"]))]


def _conv_template(attrs: Attrs) -> Template:
    kernel: list[str | int | None] = list(attrs["kernel_size"])
    return {
        "input": ["N", "C", *_spatial(attrs, "S")],
        "weight": ["O", "Cg", *kernel],
        "bias": ["O"],
        "output": ["N", "O", *_spatial(attrs, "So")],
    }


def _pool_template(attrs: Attrs) -> Template:
    return {"input": ["...", *_spatial(attrs, "S")], "output": ["...", *_spatial(attrs, "So")]}


def _conv_vjp(b: Builder, n: Applied) -> dict[str, object]:
    g, x, w = n.g["output"], n["input"], n["weight"]
    geometry = {k: n.attrs[k] for k in ("stride", "padding", "dilation", "groups")}
    out: dict[str, object] = {}
    if "input" in n.wanted:
        out["input"] = b.conv_input_grad(g, w, x, **geometry)
    if "weight" in n.wanted:
        out["weight"] = b.conv_weight_grad(g, x, w, **geometry)
    if "bias" in n.wanted:
        spatial = tuple(range(2, 2 + len(n.attrs["stride"])))
        out["bias"] = b.sum(g, axis=(0, *spatial), keepdim=False)
    return out


declare(
    Primitive(
        "conv",
        (Port("input"), Port("weight"), Port("bias", optional=True)),
        _conv_template,
        attrs=CONV_ATTRS,
        rule=rules.sliding_window,
        vjp=_conv_vjp,
        macs=lambda s: math.prod(s["output"]) * math.prod(s["weight"][1:]),
        core=True,
        doc="torch conv1d/conv2d/conv3d over [N, C, *spatial]; weight [O, C/groups, *kernel].",
        examples=CONV_EXAMPLES,
    )
)
_GEOMETRY = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
declare(
    Primitive(
        "conv_input_grad",
        (Port("input"), Port("weight"), Port("like", differentiable=False)),
        {"input": ["...g"], "weight": ["...w"], "like": ["...l"], "output": ["...l"]},
        attrs=_GEOMETRY,
        core=True,
        doc="The gradient of `conv` with respect to its input (`like`), from the output gradient.",
        examples=CONV_INPUT_GRAD_EXAMPLES,
    )
)
declare(
    Primitive(
        "conv_weight_grad",
        (Port("input"), Port("data"), Port("like", differentiable=False)),
        {"input": ["...g"], "data": ["...x"], "like": ["...l"], "output": ["...l"]},
        attrs=_GEOMETRY,
        core=True,
        doc="The gradient of `conv` with respect to its weight (`like`), from the output gradient and the input.",
        examples=CONV_WEIGHT_GRAD_EXAMPLES,
    )
)


def _pool_vjp(grad: str) -> VJP:
    """A pool's gradient rule: its `*_grad` primitive, with the pool's attributes."""

    def vjp(b: Builder, n: Applied) -> dict[str, object]:
        return {"input": b.emit(grad, {"input": n.g["output"], "like": n["input"]}, n.attrs)["output"]}

    return vjp


for _name, _attrs, _doc in (
    ("max_pool", MAX_POOL_ATTRS, "torch max_pool{n}d over the last n axes; padding counts as -inf."),
    ("avg_pool", AVG_POOL_ATTRS, "torch avg_pool{n}d over the last n axes."),
):
    declare(
        Primitive(
            _name,
            (Port("input"),),
            _pool_template,
            attrs=_attrs,
            rule=rules.sliding_window,
            vjp=_pool_vjp(f"{_name}_grad"),
            core=True,
            doc=_doc,
            examples=_pool_examples(_name),
        )
    )
    declare(
        Primitive(
            f"{_name}_grad",
            (Port("input"), Port("like", differentiable=False)),
            LIKE_OUTPUT,
            attrs=_attrs,
            core=True,
            doc=f"The gradient of `{_name}` with respect to its input (`like`)"
            + (": each window's gradient goes to its first maximum." if _name == "max_pool" else "."),
            examples=_pool_grad_examples(_name),
        )
    )
