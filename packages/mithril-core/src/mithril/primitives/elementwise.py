"""Elementwise primitives: constants, unary math, broadcasting binary math, comparisons, where."""

from __future__ import annotations

import math

from ..graph import Edge
from ..models import rules
from .builder import Applied, Builder
from .declaration import Port, Primitive, declare
from .examples import Example

UNARY = {"input": ["..."], "output": ["..."]}
BINARY = {"left": ["...l"], "right": ["...r"], "output": ["...o"]}
X = (Port("input"),)
LR = (Port("left"), Port("right"))
UNARY_EXAMPLES = (Example({"input": (3, 4)}),)
POSITIVE_EXAMPLES = (Example({"input": (3, 4)}, domain={"input": "positive"}),)
# Smooth points, then zeros: the gradient there is a convention, so no finite differences.
KINK_EXAMPLES = (*UNARY_EXAMPLES, Example({"input": (4, 6)}, domain={"input": "ties"}, smooth=False, name="kinks"))
BINARY_EXAMPLES = (
    Example({"left": (3, 4), "right": (4,)}),
    Example({"left": (2, 1, 4), "right": (3, 1)}, name="broadcast"),
    Example({"left": (None, 3, 4), "right": (None, 3, 1)}, name="symbolic"),
)
TIES = {"left": "ties", "right": "ties"}
EXTREME_EXAMPLES = (
    *BINARY_EXAMPLES,
    Example({"left": (4, 5), "right": (4, 5)}, domain=TIES, smooth=False, name="ties"),
)


def _unary(
    name: str,
    doc: str,
    vjp: object = None,
    core: bool = True,
    decomposition: object = None,
    examples: tuple[Example, ...] = UNARY_EXAMPLES,
) -> None:
    declare(Primitive(name, X, UNARY, vjp=vjp, decomposition=decomposition, core=core, doc=doc, examples=examples))  # type: ignore[arg-type]


declare(
    Primitive(
        "scalar",
        (),
        {"output": []},
        attrs={"value": 0.0},
        core=True,
        doc="A 0-d constant.",
        examples=(Example({}, sweep={"value": (1.5, -0.25)}),),
    )
)
declare(
    Primitive(
        "constant",
        (),
        lambda a: {"output": list(a["shape"])},
        attrs={"value": (), "shape": ()},
        core=True,
        doc="An array constant: `value` is the flat tuple of its elements, in row-major order.",
        examples=(Example({}, attrs={"value": (1.0, -2.0, 0.5, 3.0, 0.0, -1.5), "shape": (2, 3)}),),
    )
)

_unary("identity", "Returns its input.", lambda b, n: {"input": n.g["output"]})
_unary("neg", "Elementwise -input.", lambda b, n: {"input": b.neg(n.g["output"])})
_unary("exp", "Elementwise e**input.", lambda b, n: {"input": b.mul(n.g["output"], n.output)})
_unary(
    "log",
    "Elementwise natural logarithm.",
    lambda b, n: {"input": b.div(n.g["output"], n["input"])},
    examples=POSITIVE_EXAMPLES,
)
_unary(
    "sqrt",
    "Elementwise square root.",
    lambda b, n: {"input": b.div(n.g["output"], b.mul(b.scalar(2.0), n.output))},
    examples=POSITIVE_EXAMPLES,
)
_unary(
    "abs",
    "Elementwise absolute value; gradient sign(input), 0 at 0.",
    lambda b, n: {"input": b.mul(n.g["output"], b.sign(n["input"]))},
    examples=KINK_EXAMPLES,
)
_unary(
    "sign",
    "-1, 0 or 1 by the sign of input; 0 for NaN, as torch.sign (so abs's gradient is 0 there, as torch's).",
    lambda b, n: {"input": None},
    examples=KINK_EXAMPLES,
)
_unary(
    "tanh",
    "Hyperbolic tangent.",
    lambda b, n: {"input": b.mul(n.g["output"], b.sub(b.scalar(1.0), b.mul(n.output, n.output)))},
)
_unary(
    "erf",
    "The error function.",
    lambda b, n: {
        "input": b.mul(
            n.g["output"],
            b.mul(b.scalar(2.0 / math.sqrt(math.pi)), b.exp(b.neg(b.mul(n["input"], n["input"])))),
        )
    },
)
_unary("sin", "Elementwise sine.", lambda b, n: {"input": b.mul(n.g["output"], b.cos(n["input"]))})
_unary("cos", "Elementwise cosine.", lambda b, n: {"input": b.neg(b.mul(n.g["output"], b.sin(n["input"])))})


def _relu_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """torch's threshold_backward: 0 where the output is 0 (input <= 0), else the cotangent, NaN inputs included.

    Written g * (1 - (output == 0)), which NumPy runs as g * (output != 0), as fast as g * (input > 0)."""
    inactive = b.equal(n.output, b.scalar(0.0))
    return {"input": b.mul(n.g["output"], b.sub(b.scalar(1.0), inactive))}


_unary("relu", "max(input, 0); NaN stays NaN; gradient 0 at 0 (torch's choice).", _relu_vjp, examples=KINK_EXAMPLES)
_unary(
    "sigmoid",
    "1 / (1 + exp(-input)).",
    lambda b, n: {"input": b.mul(n.g["output"], b.mul(n.output, b.sub(b.scalar(1.0), n.output)))},
    core=False,
    decomposition=lambda b, n: {
        # (1 + tanh(x / 2)) / 2: no exp(-x) to overflow, so its derivative is 0 at ±inf as torch's, not 0 * inf
        "output": b.mul(b.scalar(0.5), b.add(b.scalar(1.0), b.tanh(b.mul(n["input"], b.scalar(0.5)))))
    },
)
_unary(
    "square",
    "input * input.",
    lambda b, n: {"input": b.mul(n.g["output"], b.mul(b.scalar(2.0), n["input"]))},
    core=False,
    decomposition=lambda b, n: {"output": b.mul(n["input"], n["input"])},
)


def _silu(b: Builder, n: Applied) -> dict[str, object]:
    return {"output": b.mul(n["input"], b.sigmoid(n["input"]))}


def _silu_vjp(b: Builder, n: Applied) -> dict[str, object]:
    x = n["input"]
    s = b.sigmoid(x)
    slope = b.mul(s, b.add(b.scalar(1.0), b.mul(x, b.sub(b.scalar(1.0), s))))
    return {"input": b.mul(n.g["output"], slope)}


_unary("silu", "input * sigmoid(input) (torch.nn.SiLU).", _silu_vjp, core=False, decomposition=_silu)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _gelu(b: Builder, n: Applied) -> dict[str, object]:
    x = n["input"]
    if n.attrs["approximate"] == "tanh":
        cube = b.mul(b.scalar(_GELU_C), b.mul(x, b.mul(x, x)))
        inner = b.tanh(b.mul(b.scalar(_SQRT_2_OVER_PI), b.add(x, cube)))
    else:
        inner = b.erf(b.mul(x, b.scalar(1.0 / math.sqrt(2.0))))
    return {"output": b.mul(b.mul(b.scalar(0.5), x), b.add(b.scalar(1.0), inner))}


def _gelu_vjp(b: Builder, n: Applied) -> dict[str, object]:
    x, one, half = n["input"], b.scalar(1.0), b.scalar(0.5)
    if n.attrs["approximate"] == "tanh":
        x2 = b.mul(x, x)
        t = b.tanh(b.mul(b.scalar(_SQRT_2_OVER_PI), b.add(x, b.mul(b.scalar(_GELU_C), b.mul(x, x2)))))
        dt = b.mul(
            b.sub(one, b.mul(t, t)), b.mul(b.scalar(_SQRT_2_OVER_PI), b.add(one, b.mul(b.scalar(3 * _GELU_C), x2)))
        )
        slope = b.add(b.mul(half, b.add(one, t)), b.mul(b.mul(half, x), dt))
    else:
        cdf = b.mul(half, b.add(one, b.erf(b.mul(x, b.scalar(1.0 / math.sqrt(2.0))))))
        pdf = b.mul(b.scalar(1.0 / math.sqrt(2.0 * math.pi)), b.exp(b.mul(b.scalar(-0.5), b.mul(x, x))))
        slope = b.add(cdf, b.mul(x, pdf))
    return {"input": b.mul(n.g["output"], slope)}


declare(
    Primitive(
        "gelu",
        X,
        UNARY,
        attrs={"approximate": "none"},
        vjp=_gelu_vjp,
        decomposition=_gelu,
        doc="torch.nn.GELU: exact (erf) or tanh approximation.",
        # No NaN/Inf case: torch's float32 CPU kernel gives gelu(+inf) = NaN, its float64 one +inf.
        examples=(Example({"input": (3, 4)}, sweep={"approximate": ("none", "tanh")}, nonfinite=()),),
    )
)


def _leaky(b: Builder, n: Applied) -> dict[str, object]:
    x = n["input"]
    return {"output": b.where(b.greater(x, b.scalar(0.0)), x, b.mul(x, b.scalar(n.attrs["negative_slope"])))}


def _leaky_vjp(b: Builder, n: Applied) -> dict[str, object]:
    g = n.g["output"]
    return {"input": b.where(b.greater(n["input"], b.scalar(0.0)), g, b.mul(g, b.scalar(n.attrs["negative_slope"])))}


declare(
    Primitive(
        "leaky_relu",
        X,
        UNARY,
        attrs={"negative_slope": 0.01},
        vjp=_leaky_vjp,
        decomposition=_leaky,
        doc="torch.nn.LeakyReLU: input if input > 0 else negative_slope * input.",
        examples=tuple(
            Example(e.shapes, {"negative_slope": 0.2}, domain=e.domain, smooth=e.smooth, name=e.name)
            for e in KINK_EXAMPLES
        ),
    )
)


# -- binary ---------------------------------------------------------------------------------
def _binary(name: str, doc: str, vjp: object, examples: tuple[Example, ...] = BINARY_EXAMPLES) -> None:
    declare(Primitive(name, LR, BINARY, rule=rules.broadcast, vjp=vjp, core=True, doc=doc, examples=examples))  # type: ignore[arg-type]


def _back(b: Builder, n: Applied, left: object, right: object) -> dict[str, object]:
    """Cotangents summed back to each operand's shape (undoing broadcasting)."""
    out: dict[str, object] = {}
    if "left" in n.wanted:
        out["left"] = b.sum_like(left(), n["left"])  # type: ignore[operator]
    if "right" in n.wanted:
        out["right"] = b.sum_like(right(), n["right"])  # type: ignore[operator]
    return out


_binary("add", "left + right.", lambda b, n: _back(b, n, lambda: n.g["output"], lambda: n.g["output"]))
_binary("sub", "left - right.", lambda b, n: _back(b, n, lambda: n.g["output"], lambda: b.neg(n.g["output"])))
_binary(
    "mul",
    "left * right.",
    lambda b, n: _back(b, n, lambda: b.mul(n.g["output"], n["right"]), lambda: b.mul(n.g["output"], n["left"])),
)
_binary(
    "div",
    "left / right.",
    lambda b, n: _back(
        b,
        n,
        lambda: b.div(n.g["output"], n["right"]),
        lambda: b.neg(b.mul(n.g["output"], b.div(n.output, n["right"]))),
    ),
    tuple(Example(e.shapes, domain={"right": "positive"}, name=e.name) for e in BINARY_EXAMPLES),
)


def _pow_vjp(b: Builder, n: Applied) -> dict[str, object]:
    """torch's pow gradients: 0 for the base where the exponent is 0, and for the exponent where the
    base is 0 and the exponent >= 0."""
    g, x, y, zero, one = n.g["output"], n["left"], n["right"], b.scalar(0.0), b.scalar(1.0)

    def base() -> object:
        grad = b.mul(g, b.mul(y, b.pow(x, b.sub(y, one))))
        return b.where(b.equal(y, zero), zero, grad)

    def exponent() -> object:
        x_zero = b.equal(x, zero)
        safe_log = b.log(b.where(x_zero, one, x))
        masked = b.mul(x_zero, b.sub(one, b.greater(zero, y)))
        return b.where(masked, zero, b.mul(g, b.mul(n.output, safe_log)))

    return _back(b, n, base, exponent)


_binary(
    "pow",
    "left ** right.",
    _pow_vjp,
    tuple(Example(e.shapes, domain={"left": "positive"}, name=e.name) for e in BINARY_EXAMPLES),
)


def _extreme_vjp(b: Builder, n: Applied, maximum: bool) -> dict[str, object]:
    """maximum/minimum, torch's rule: the loser gets 0, a tie gives each side half, and where either
    side is NaN (neither wins nor ties) both sides get the whole cotangent."""
    g, x, y, one = n.g["output"], n["left"], n["right"], b.scalar(1.0)
    tie = b.mul(b.scalar(0.5), b.equal(x, y))

    def share(mine: Edge, other: Edge) -> Edge:
        lost = b.greater(other, mine) if maximum else b.greater(mine, other)
        return b.mul(g, b.sub(b.sub(one, lost), tie))

    return _back(b, n, lambda: share(x, y), lambda: share(y, x))


_binary(
    "maximum", "Elementwise maximum; ties share the gradient.", lambda b, n: _extreme_vjp(b, n, True), EXTREME_EXAMPLES
)
_binary(
    "minimum", "Elementwise minimum; ties share the gradient.", lambda b, n: _extreme_vjp(b, n, False), EXTREME_EXAMPLES
)

for _name, _doc in (("greater", "1.0 where left > right, else 0.0."), ("equal", "1.0 where left == right, else 0.0.")):
    declare(
        Primitive(
            _name,
            (Port("left", differentiable=False), Port("right", differentiable=False)),
            BINARY,
            rule=rules.broadcast,
            core=True,
            doc=_doc,
            examples=(Example({"left": (3, 4), "right": (4,)}, domain=TIES),),
        )
    )


def _where_vjp(b: Builder, n: Applied) -> dict[str, object]:
    g, c, zero = n.g["output"], n["condition"], b.scalar(0.0)
    out: dict[str, object] = {}
    if "left" in n.wanted:
        out["left"] = b.sum_like(b.where(c, g, zero), n["left"])
    if "right" in n.wanted:
        out["right"] = b.sum_like(b.where(c, zero, g), n["right"])
    return out


declare(
    Primitive(
        "where",
        (Port("condition", differentiable=False), Port("left"), Port("right")),
        {"condition": ["...c"], "left": ["...l"], "right": ["...r"], "output": ["...o"]},
        rule=rules.broadcast3,
        vjp=_where_vjp,
        core=True,
        doc="left where condition != 0, else right; all three broadcast.",
        examples=(
            Example({"condition": (3, 4), "left": (3, 4), "right": (4,)}, domain={"condition": "ties"}),
            Example(
                {"condition": (4,), "left": (2, 3, 4), "right": (3, 1)}, domain={"condition": "ties"}, name="broadcast"
            ),
        ),
    )
)
