r"""Surrogate derivatives of the multi-threshold staircase ``s = clip(floor(v / V_th), 0, S_max)``.

The staircase's true derivative is a train of Dirac pulses at ``v = i * V_th``
(paper, Fig. 4). Backpropagation replaces it with one of these curves, always
evaluated at the pre-reset membrane potential ``v``:

``f1`` (eq. 14)
    :math:`\sum_{i=1}^{S_{max}} i\,\alpha_H \exp(-(v - iV_{th})^2 / (\alpha_W / i))`:
    term ``i`` has height ``i * alpha_h`` and width ``alpha_w / i``.
``f2`` (eq. 15, the paper's choice)
    :math:`\sum_{i=1}^{S_{max}} \alpha_H \exp(-(v - iV_{th})^2 / \alpha_W)`.
``f3`` (eq. 16)
    the trapezoid: ``alpha_h * v / V_th`` on ``[0, V_th)``, ``alpha_h`` on
    ``[V_th, S_max V_th)``, ``alpha_h * (S_max + 1 - v / V_th)`` on
    ``[S_max V_th, (S_max + 1) V_th)``, and 0 elsewhere.

Comparison curves (not in the paper): ``rectangular``, ``sigmoid`` and
``arctan`` put one bump of the usual single-threshold surrogate at the nearest
threshold ``c * V_th``, ``c = clip(round(v / V_th), 1, S_max)``. Each bump has
the same peak (``alpha_h``) and the same area (``alpha_h * sqrt(pi * alpha_w)``)
as one Gaussian term of ``f2``, so ``alpha_h`` and ``alpha_w`` mean the same for
every curve.

Cost per element. ``f1`` and ``f2`` sum only the ``2k + 1`` Gaussian terms
nearest to ``v``; ``k`` depends on ``rho = V_th**2 / alpha_w`` alone, never on
``S_max``. Truncation error bound (derived in :func:`gaussian_window`): with
``m`` the distance in thresholds from the nearest kept centre, a neglected term
is at most ``h(m) * exp(-m (m - 1) rho)`` times the nearest term, with
``h(m) = 2`` for ``f2`` (one term each side) and ``h(m) = m + 2`` for ``f1``
(heights grow by at most a factor ``m + 1`` upwards). ``k`` is the smallest
window whose summed bound is at most ``TRUNCATION_TOL = 1e-7`` of the full sum.
This relative bound holds for every ``v`` with ``f2`` and for
``v <= (S_max + 1/2) V_th`` with ``f1``; above that, ``f1``'s absolute error is
at most ``S_max * alpha_h * 1e-7``. With Table 1's settings (``V_th = 10``,
``alpha_w = 20``, ``rho = 5``) ``k = 2``: 5 terms instead of 15. ``f2`` gets them
from two exponentials per element (term ``j`` is the nearest one times
``exp(-rho j^2) exp(2 rho d)^j``, see :func:`_f2_window`); ``f1``'s widths differ
per term, so it takes ``2k + 1``.

Underflow. An exponential term (of ``f1``, ``f2`` or ``sigmoid``) smaller than
``sqrt(tiny)`` of its height is exactly 0, where ``tiny`` is the dtype's smallest normal
number (so below about 1e-19 in float32, 1e-154 in float64). Kept, such terms would
make the gradients they multiply subnormal, and subnormal operands slow CPU matmuls and
``exp`` many times over; ``torch.set_flush_denormal`` does not help, since it covers
only the calling thread, not PyTorch's worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

TRUNCATION_TOL = 1e-7
NAMES = ("f1", "f2", "f3", "rectangular", "sigmoid", "arctan")


def gaussian_window(name: str, alpha_w: float, v_th: float, s_max: int, tol: float = TRUNCATION_TOL) -> int:
    """Half-width ``k`` of the window of Gaussian terms kept around the nearest centre.

    Bound on the neglected part relative to the full sum (see module docstring):
    ``sum_{m > k} h(m) exp(-m (m - 1) rho)``. Derivation for a neglected centre
    ``m`` thresholds from the nearest one ``c`` (at distance ``delta * V_th``,
    ``delta <= 1/2``): its squared distance exceeds the nearest one's by at
    least ``m (m - 1) V_th**2``; for ``f1`` the extra width factor ``i >= 1``
    only makes the exponent larger and the height ratio ``i / c`` is at most
    ``m + 1``.
    """
    rho = v_th * v_th / alpha_w
    height = (lambda m: 2.0) if name == "f2" else (lambda m: m + 2.0)
    for k in range(s_max):
        tail = sum(height(m) * math.exp(-m * (m - 1) * rho) for m in range(k + 1, s_max))
        if tail <= tol:
            return k
    return s_max


def nearest_threshold(v: torch.Tensor, v_th: float, s_max: int) -> torch.Tensor:
    """Index ``c`` in ``[1, s_max]`` of the threshold ``c * v_th`` nearest to ``v``."""
    return torch.clamp(torch.round(v / v_th), 1, s_max)


def _gaussian_sum(
    v: torch.Tensor, v_th: float, s_max: int, alpha_h: float, alpha_w: float, scale_with_index: bool, k: int
) -> torch.Tensor:
    """Sum of the ``2k + 1`` Gaussian terms around the nearest centre, or of all when that covers 1..s_max.

    The window's centre is clamped to ``[1 + k, s_max - k]`` so the window never
    leaves ``1..s_max`` (no masks) while still holding every existing term within
    ``k`` of the nearest centre: the bound above holds unchanged.
    """
    x = v / v_th
    rho = v_th * v_th / alpha_w
    if not scale_with_index and _two_exponentials_suffice(rho, k, v.dtype):
        return alpha_h * _f2_window(x, s_max, rho, k)
    if 2 * k + 1 >= s_max:
        offsets = [x - i for i in range(1, s_max + 1)]
        centres: list[float | torch.Tensor] = [float(i) for i in range(1, s_max + 1)]
    else:
        c = torch.clamp(torch.round(x), 1 + k, s_max - k)
        d = x - c
        offsets = [d - j for j in range(-k, k + 1)]
        centres = [c + j for j in range(-k, k + 1)]
    out = torch.zeros_like(v)
    for i, offset in zip(centres, offsets):
        if scale_with_index:  # f1: height i * alpha_h, width alpha_w / i
            out = out + i * _exp_or_zero(offset * offset * (-rho * i))
        else:
            out = out + _exp_or_zero(offset * offset * -rho)
    return alpha_h * out


def _log_floor(dtype: torch.dtype) -> float:
    """``log(sqrt(tiny))``: exponential terms below it are exactly 0 (see "Underflow" above)."""
    return 0.5 * math.log(torch.finfo(dtype).tiny)


def _reach(rho: float, dtype: torch.dtype) -> float:
    """The ``|d|`` beyond which the nearest term, and so every term, is below sqrt(tiny)."""
    return math.sqrt(-_log_floor(dtype) / rho)


def _two_exponentials_suffice(rho: float, k: int, dtype: torch.dtype) -> bool:
    """Whether :func:`_f2_window`'s powers ``exp(+-2 rho j d)``, ``j <= k``, ``|d| <= reach``,
    stay far from overflow in ``dtype`` (true for Table 1's settings in float32 and float64)."""
    return 2 * rho * k * _reach(rho, dtype) < math.log(torch.finfo(dtype).max) - 8


def _f2_window(x: torch.Tensor, s_max: int, rho: float, k: int) -> torch.Tensor:
    """f2 / alpha_h over the terms within ``k`` of the nearest centre, with two exponentials
    per element instead of ``2k + 1`` (exp is most of the neuron's backward on a CPU).

    With ``c`` the nearest centre and ``d = x - c``, the term ``j`` away is
    ``exp(-rho (d - j)^2) = exp(-rho d^2) exp(-rho j^2) r^j`` with ``r = exp(2 rho d)``: the
    sum is the nearest term times ``1 + sum_j exp(-rho j^2) r^j`` over the terms that exist
    (``1 <= c + j <= s_max``). Beyond ``|d| = reach`` (:func:`_reach`) the nearest term is
    below sqrt(tiny) and the result is 0, so ``r`` is computed from ``d`` clamped there:
    within it the sum is exact, and ``r^(+-j)`` stays finite (:func:`_two_exponentials_suffice`).
    The result is the nearest term (>= sqrt(tiny)) times a factor >= 1, so it is never
    subnormal. Measured at T = 32 (neuron forward and backward, B = 4, 2 threads, quiet
    machine): 1.7x ReLU, against 2.0x with a check for underflow on each term.
    """
    c = torch.clamp(torch.round(x), 1, s_max)
    d = x - c
    reach = _reach(rho, x.dtype)
    r = torch.exp(torch.clamp(d, -reach, reach) * (2 * rho))
    r_inv = 1 / r
    factor: torch.Tensor | float = 1.0
    up: torch.Tensor | float = 1.0
    down: torch.Tensor | float = 1.0
    for j in range(1, k + 1):
        up, down = up * r, down * r_inv
        factor = factor + math.exp(-rho * j * j) * (
            torch.where(c <= s_max - j, up, 0.0) + torch.where(c >= 1 + j, down, 0.0)
        )
    return _exp_or_zero(d * d * -rho) * factor


def _exp_or_zero(exponent: torch.Tensor) -> torch.Tensor:
    """``exp(exponent)``, or exactly 0 where that is below ``sqrt(tiny)`` (see "Underflow" above)."""
    log_floor = _log_floor(exponent.dtype)
    return torch.where(exponent < log_floor, 0.0, torch.exp(torch.clamp(exponent, min=log_floor)))


def _trapezoid(v: torch.Tensor, v_th: float, s_max: int, alpha_h: float) -> torch.Tensor:
    x = v / v_th
    rising_flat_falling = torch.where(x < 1, x, torch.where(x < s_max, torch.ones_like(x), s_max + 1 - x))
    inside = (x >= 0) & (x < s_max + 1)
    return alpha_h * torch.where(inside, rising_flat_falling, torch.zeros_like(x))


def _nearest_bump(v: torch.Tensor, v_th: float, s_max: int, alpha_h: float, alpha_w: float, shape: str) -> torch.Tensor:
    d = v - nearest_threshold(v, v_th, s_max) * v_th
    area_width = math.sqrt(math.pi * alpha_w)  # area / height of one f2 Gaussian term
    if shape == "rectangular":
        return alpha_h * (d.abs() < area_width / 2).to(v.dtype)
    if shape == "sigmoid":  # 4 sig(z) (1 - sig(z)) = 4 e^-|z| / (1 + e^-|z|)^2
        decay = _exp_or_zero(-(d / (area_width / 4)).abs())
        return alpha_h * 4 * decay / (1 + decay) ** 2
    scale = area_width / math.pi  # arctan: alpha_h / (1 + (d/scale)^2) has area alpha_h * pi * scale
    return alpha_h / (1 + (d / scale) ** 2)


@dataclass(frozen=True)
class Surrogate:
    """A named surrogate curve with its parameters; call it on membrane potentials.

    The defaults are the paper's Table 1, and the only place mtsnn writes them (the neuron's
    :class:`~mtsnn.neuron.LIFParams` and the training settings take theirs from here).
    Input: potentials of any shape; output: the curve's values, same shape.

    >>> f2 = Surrogate("f2")
    >>> [round(x, 6) for x in f2(torch.tensor([10.0, 15.0])).tolist()]   # at a threshold; midway
    [1.006738, 0.573023]
    """

    name: str = "f2"
    alpha_h: float = 1.0
    alpha_w: float = 20.0
    v_th: float = 10.0
    s_max: int = 15
    window: int | None = field(init=False, compare=False)  # Gaussian half-width for f1/f2, else None

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"unknown surrogate {self.name!r}; choose one of {', '.join(NAMES)}")
        for setting in ("alpha_h", "alpha_w", "v_th"):
            if not 0 < getattr(self, setting) < math.inf:
                raise ValueError(f"{setting} must be finite and > 0, got {setting}={getattr(self, setting)}")
        if isinstance(self.s_max, bool) or int(self.s_max) != self.s_max or self.s_max < 1:
            raise ValueError(f"s_max must be an integer >= 1, got s_max={self.s_max}")
        object.__setattr__(self, "s_max", int(self.s_max))  # 15.0 from a config file counts as 15
        window = gaussian_window(self.name, self.alpha_w, self.v_th, self.s_max) if self.name in ("f1", "f2") else None
        object.__setattr__(self, "window", window)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self.window is not None:  # f1, f2
            return _gaussian_sum(
                v, self.v_th, self.s_max, self.alpha_h, self.alpha_w, scale_with_index=self.name == "f1", k=self.window
            )
        if self.name == "f3":
            return _trapezoid(v, self.v_th, self.s_max, self.alpha_h)
        return _nearest_bump(v, self.v_th, self.s_max, self.alpha_h, self.alpha_w, self.name)


def get(
    name: str,
    *,
    alpha_h: float = Surrogate.alpha_h,
    alpha_w: float = Surrogate.alpha_w,
    v_th: float = Surrogate.v_th,
    s_max: int = Surrogate.s_max,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The surrogate curve ``name`` (one of :data:`NAMES`) with the given parameters."""
    return Surrogate(name, alpha_h, alpha_w, v_th, s_max)
