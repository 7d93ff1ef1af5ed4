"""The activations of fastnn's catalogue (and the loss links) as ONNX nodes, with
the definitions and constants of fastnn's reference (fastnn.backends.reference).

Where onnxruntime's CPU kernels exist for float32 but not float64 (Elu, Selu,
LeakyRelu, Softplus in onnxruntime 1.32), or are inaccurate (Sigmoid), the
activation is composed of operators that exist and are accurate for both
(Where, Exp, Log, ...), the same graph for both dtypes; expm1 and log1p, which
ONNX lacks, are composed so that they keep their relative accuracy near 0;
gelu's normal CDF is an erfc of Chebyshev form fitted when this module loads
(onnxruntime has no float64 Erf, and 1 + erf cancels in the lower tail).
"""

import math

from numpy.polynomial import chebyshev
from scipy import special

from ..backends.reference import (
    ELU_ALPHA,
    LEAKY_RELU_SLOPE,
    SELU_ALPHA,
    SELU_SCALE,
    SOFTPLUS_THRESHOLD,
)


def expm1(g, x):
    """e^x - 1, accurate near 0: where |x| < 1, (u - 1) x / log(u) with u = e^x
    (the rounding of u cancels between u - 1 and log u; x itself where u rounds
    to 1); elsewhere u - 1, whose rounding is small against the result."""
    u = g.op("Exp", x)
    u_minus_1 = g.op("Sub", u, g.scalar(1))
    near = g.op("Div", g.op("Mul", u_minus_1, x), g.op("Log", u))
    near = g.op("Where", g.op("Equal", u, g.scalar(1)), x, near)
    return g.op("Where", g.op("Less", g.op("Abs", x), g.scalar(1)), near, u_minus_1)


def log1p(g, x):
    """log(1 + x), accurate near 0: x log(w) / (w - 1) with w = 1 + x (the rounding
    of w cancels), and x itself where w rounds to 1."""
    w = g.op("Add", x, g.scalar(1))
    ratio = g.op("Div", g.op("Mul", x, g.op("Log", w)), g.op("Sub", w, g.scalar(1)))
    return g.op("Where", g.op("Equal", w, g.scalar(1)), x, ratio)


def logistic(g, x):
    """1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: relatively accurate in
    both tails (onnxruntime's Sigmoid is not: 7e-4 relative in float32 and 1e-12
    in float64 on [-9, 9])."""
    e = g.op("Exp", g.op("Neg", g.op("Abs", x)))
    one_plus_e = g.op("Add", g.scalar(1), e)
    return g.op("Where", g.op("Less", x, g.scalar(0)), g.op("Div", e, one_plus_e),
                g.op("Div", g.scalar(1), one_plus_e))


def _negative_part(g, x, alpha):
    """alpha * expm1(min(x, 0)): the x <= 0 branch of elu and selu."""
    return g.op("Mul", g.scalar(alpha), expm1(g, g.op("Min", x, g.scalar(0))))


def elu(g, x):
    return g.op("Where", g.op("Greater", x, g.scalar(0)), x, _negative_part(g, x, ELU_ALPHA))


def selu(g, x):
    inner = g.op("Where", g.op("Greater", x, g.scalar(0)), x, _negative_part(g, x, SELU_ALPHA))
    return g.op("Mul", g.scalar(SELU_SCALE), inner)


def leaky_relu(g, x):
    return g.op("Where", g.op("Greater", x, g.scalar(0)), x, g.op("Mul", g.scalar(LEAKY_RELU_SLOPE), x))


def softplus(g, x):
    """max(x, 0) + log1p(e^-|x|), and x itself above the threshold."""
    soft = g.op("Add", g.op("Max", x, g.scalar(0)), log1p(g, g.op("Exp", g.op("Neg", g.op("Abs", x)))))
    return g.op("Where", g.op("Greater", x, g.scalar(SOFTPLUS_THRESHOLD)), x, soft)


# erfc(z) for z >= 0 as t h(t) e^(-z^2), t = 2 / (2 + z): h is smooth on t in
# (0, 1] (h(1) = 1, h -> 1 / (2 sqrt(pi)) as z -> inf), so a Chebyshev interpolant
# of degree 24 on z in [0, ERFC_ZMAX] matches scipy's erfcx to 6e-15 relative.
# z is clipped at ERFC_ZMAX, where erfc is 0 in float64 (below its smallest
# subnormal) as it is beyond.
ERFC_ZMAX = 28.0
ERFC_DEGREE = 24
_T_LOW = 2 / (2 + ERFC_ZMAX)


def _h(t):
    return special.erfcx(2 / t - 2) / t


ERFC_CHEBYSHEV = chebyshev.Chebyshev.interpolate(_h, ERFC_DEGREE, domain=[_T_LOW, 1]).coef


def erfc_of_scaled(g, a):
    """erfc(a / sqrt 2) for a >= 0 (twice the standard normal's upper tail at a),
    relatively accurate (see ERFC_CHEBYSHEV): the Chebyshev series by Clenshaw's
    recurrence in u = t mapped onto [-1, 1], times e^(-a^2 / 2)."""
    a = g.op("Min", a, g.scalar(ERFC_ZMAX * math.sqrt(2)))
    z = g.op("Mul", a, g.scalar(1 / math.sqrt(2)))
    t = g.op("Div", g.scalar(2), g.op("Add", z, g.scalar(2)))
    # u = (2 t - (1 + t_low)) / (1 - t_low), in [-1, 1]
    u = g.op("Sub", g.op("Mul", t, g.scalar(2 / (1 - _T_LOW))), g.scalar((1 + _T_LOW) / (1 - _T_LOW)))
    two_u = g.op("Add", u, u)
    c = ERFC_CHEBYSHEV
    b1, b2 = g.scalar(c[-1]), None  # b_k = c_k + 2u b_(k+1) - b_(k+2)
    for k in range(len(c) - 2, 0, -1):
        b = g.op("Add", g.op("Mul", two_u, b1), g.scalar(c[k]))
        b1, b2 = (b if b2 is None else g.op("Sub", b, b2)), b1
    h = g.op("Sub", g.op("Add", g.op("Mul", u, b1), g.scalar(c[0])), b2)  # c_0 + u b_1 - b_2
    return g.op("Mul", g.op("Mul", t, h), exp_minus_half_square(g, a))


def exp_minus_half_square(g, a):
    """e^(-a^2 / 2) for 0 <= a <= 40 as e^(-h^2 / 2) e^(-(a - h)(a + h) / 2), h = a
    rounded down to a multiple of 1/16: h^2 / 2 is exact (at most 20 bits), and
    the rounding of the small (a - h)(a + h) costs little, where that of a^2
    would cost a^2 / 2 ulps of the result (4e-6 at a = 11.6 in float32); a itself
    is the input, not a rounded a / sqrt 2."""
    h = g.op("Mul", g.op("Floor", g.op("Mul", a, g.scalar(16))), g.scalar(1 / 16))
    rest = g.op("Mul", g.op("Sub", a, h), g.op("Add", a, h))
    return g.op("Mul", g.op("Exp", g.op("Mul", g.op("Mul", h, h), g.scalar(-0.5))),
                g.op("Exp", g.op("Mul", rest, g.scalar(-0.5))))


def gelu(g, x):
    """x Phi(x), Phi the standard normal CDF (the exact form, as the reference):
    Phi = erfc(|x| / sqrt 2) / 2 for x < 0, 1 - that for x >= 0, relatively
    accurate in the lower tail as the reference's ndtr. (With ONNX's Erf,
    (1 + erf(x / sqrt 2)) / 2 cancels there: 5% off at x = -5 in float32; and
    onnxruntime has no float64 Erf.)"""
    half_tail = g.op("Mul", g.scalar(0.5), erfc_of_scaled(g, g.op("Abs", x)))
    cdf = g.op("Where", g.op("Less", x, g.scalar(0)), half_tail, g.op("Sub", g.scalar(1), half_tail))
    return g.op("Mul", x, cdf)


# name -> builder(g, x) -> output name; softmax acts on the last axis.
ACTIVATIONS = {
    "identity": lambda g, x: x,
    "logistic": logistic,
    "tanh": lambda g, x: g.op("Tanh", x),
    "relu": lambda g, x: g.op("Relu", x),
    "leaky_relu": leaky_relu,
    "elu": elu,
    "selu": selu,
    "gelu": gelu,
    "softplus": softplus,
    "softmax": lambda g, x: g.op("Softmax", x, axis=-1),
}

# a loss's link (fastnn.nn.losses: Loss.link): an activation, or exp (Poisson)
LINKS = {**ACTIVATIONS, "exp": lambda g, x: g.op("Exp", x)}


def activation(g, name, x):
    """The activation `name` of the catalogue applied to x."""
    if name not in ACTIVATIONS:
        raise ValueError(f"no ONNX form for the activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](g, x)
