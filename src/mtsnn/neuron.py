r"""The multi-threshold leaky integrate-and-fire neuron: a functional core and its module.

Dynamics (paper eqs. 4-5, soft reset), per time step ``t = 1..T`` and element:

.. math::

    v[t] &= (1 - 1/\tau_m)\, u[t-1] + I[t], \qquad u[0] = 0 \\
    s[t] &= \mathrm{clip}(\lfloor v[t] / V_{th} \rfloor, 0, S_{max}) \\
    u[t] &= v[t] - s[t]\, V_{th}

``v`` is the pre-reset potential, ``s`` an integer spike count, ``u`` the
potential carried to the next step. ``S_max = 1`` gives the ordinary LIF neuron
with subtractive reset.

Gradients. ``ds/dv`` is replaced by a surrogate ``f(v[t])`` (:mod:`mtsnn.surrogate`),
always at the pre-reset ``v[t]``. Three ``grad_mode`` s share this forward:

``"bptt-detach"``
    backpropagation through time with the reset as a constant (``du/dv = 1``):
    ``g_v[t] = f(v[t]) dL/ds[t] + beta g_v[t+1]``, ``beta = 1 - 1/tau_m``.
``"bptt"``
    full BPTT including the reset path, ``du/dv = 1 - V_th f(v[t])``.
``"paper"``
    eqs. (7)-(13): the error ``delta[t] = f(v[t]) dL/ds[t]`` travels only in
    space, and the weight gradient uses the trace of eq. (12). It needs the
    weight layer, so it lives in :mod:`mtsnn.layers`; here is its neuron part
    (:func:`paper_backward`).

For the backward the forward keeps only its input current (one value per element and
step, or per element under direct input, and a tensor that exists anyway); the backward
reruns the cheap recurrence to get ``v`` back rather than have the forward write it out.

Speed: the functional core (:func:`lif_forward`, :func:`bptt_backward`,
:func:`paper_backward`) runs fused by ``torch.compile`` (inductor: C++ on CPUs, Triton
on GPUs), one kernel instead of dozens of element-wise passes; where compiling fails,
the same functions run eagerly. ``MTSNN_NEURON_BACKEND=eager|inductor|auto`` (default
``auto``) overrides; :func:`neuron_backend` says which one runs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from . import surrogate as surrogates

GRAD_MODES = ("paper", "bptt-detach", "bptt")
BACKENDS = ("auto", "inductor", "eager")


@dataclass(frozen=True)
class LIFParams:
    """Validated neuron settings. Defaults: the paper's Table 1 (tau_m here, the rest from
    :class:`~mtsnn.surrogate.Surrogate`), and ``"bptt-detach"``: a neuron alone cannot have
    the paper's gradient, which needs its weight layer (blocks default to it:
    :data:`mtsnn.layers.BLOCK_GRAD_MODE`).

    >>> p = LIFParams()
    >>> p.decay, p.surrogate_fn.window     # leak 1 - 1/tau_m; f2 sums the 2 * 2 + 1 nearest terms
    (0.9, 2)
    """

    v_th: float = surrogates.Surrogate.v_th
    tau_m: float = 10.0
    s_max: int = surrogates.Surrogate.s_max
    surrogate: str = surrogates.Surrogate.name
    alpha_h: float = surrogates.Surrogate.alpha_h
    alpha_w: float = surrogates.Surrogate.alpha_w
    grad_mode: str = "bptt-detach"
    surrogate_fn: surrogates.Surrogate = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        if not self.tau_m >= 1:  # math.inf is allowed: no leak, an integrate-and-fire neuron
            raise ValueError(f"tau_m must be >= 1 (time steps), got tau_m={self.tau_m}")
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"unknown grad_mode {self.grad_mode!r}; choose one of {', '.join(GRAD_MODES)}")
        # the curve checks v_th, s_max, alpha_h and alpha_w, which it shares
        curve = surrogates.Surrogate(self.surrogate, self.alpha_h, self.alpha_w, self.v_th, self.s_max)
        object.__setattr__(self, "surrogate_fn", curve)

    @property
    def decay(self) -> float:
        """``beta = 1 - 1/tau_m``, the leak factor per step."""
        return 1.0 - 1.0 / self.tau_m


def spike_count(v: torch.Tensor, v_th: float, s_max: int) -> torch.Tensor:
    """Eq. (5): ``clip(floor(v / v_th), 0, s_max)``."""
    return torch.clamp(torch.floor(v / v_th), 0, s_max)


def lif_step(current: torch.Tensor, u: torch.Tensor, p: LIFParams) -> tuple[torch.Tensor, torch.Tensor]:
    """One step for streaming inference: ``(I[t], u[t-1]) -> (s[t], u[t])``, each of the
    current's shape. Start from ``u = 0``.

    >>> s, u = lif_step(torch.tensor([25.0]), torch.zeros(1), LIFParams())   # V_th 10: 2 spikes, 5 left
    >>> s, u = lif_step(torch.tensor([25.0]), u, LIFParams())                # 0.9 * 5 + 25 = 29.5
    >>> s.item(), round(u.item(), 4)
    (2.0, 9.5)
    """
    v = p.decay * u + current
    s = spike_count(v, p.v_th, p.s_max)
    return s, v - s * p.v_th


def _unroll(
    current: torch.Tensor, p: LIFParams, num_steps: int | None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The recurrence from rest: per-step lists of spike counts ``s[t]`` and pre-reset potentials ``v[t]``."""
    if current.dtype in (torch.float16, torch.bfloat16):  # under autocast: integrate in float32
        current = current.float()
    steps = num_steps if num_steps is not None else current.shape[0]
    # Lists stacked by the callers rather than writes into preallocated tensors: torch.compile
    # fuses the whole loop far better without the in-place slices (0.41 s vs 1.16 s at T=32).
    u = torch.zeros_like(current if num_steps is not None else current[0])
    spikes, potentials = [], []
    for t in range(steps):
        v = p.decay * u + (current if num_steps is not None else current[t])
        s = spike_count(v, p.v_th, p.s_max)
        u = v - s * p.v_th
        spikes.append(s)
        potentials.append(v)
    return spikes, potentials


def lif_forward(current: torch.Tensor, p: LIFParams, num_steps: int | None = None) -> torch.Tensor:
    """Run the neuron from rest; return the spike counts ``[T, ...]``.

    ``current`` is ``[T, ...]``, or, with ``num_steps``, one current held for
    ``num_steps`` steps (direct input: computed once, not ``T`` times).
    """
    return torch.stack(_unroll(current, p, num_steps)[0])


def bptt_backward(
    grad_spikes: torch.Tensor, current: torch.Tensor, p: LIFParams, num_steps: int | None = None
) -> torch.Tensor:
    """Gradient w.r.t. ``current`` (summed over the steps under direct input) for
    ``grad_mode`` ``"bptt"`` or ``"bptt-detach"``."""
    _, v = _unroll(current, p, num_steps)
    # The surrogate is evaluated step by step inside the loop (here and in paper_backward)
    # so that the compiled kernel never writes it out as a [T, ...] tensor.
    grads = []
    g_u = torch.zeros_like(v[0])  # dL/du[t], from v[t+1] = beta u[t] + I[t+1]
    for t in reversed(range(len(v))):
        f = p.surrogate_fn(v[t])
        if p.grad_mode == "bptt":
            g_v = f * (grad_spikes[t] - p.v_th * g_u) + g_u
        else:
            g_v = f * grad_spikes[t] + g_u
        grads.append(g_v)
        g_u = p.decay * g_v
    return sum(grads[1:], grads[0]) if num_steps is not None else torch.stack(grads[::-1])


def paper_backward(
    grad_spikes: torch.Tensor, current: torch.Tensor, p: LIFParams, num_steps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The neuron part of eqs. (7)-(13): ``(delta, a)``, both ``[T, ...]`` (summed over
    the steps under direct input, where the layer's input is the same at every step).

    ``delta[t] = f(v[t]) dL/ds[t]`` (eqs. 9-10) is what the layer below receives
    through ``W^T``. ``a`` is the cotangent whose ordinary weight gradient
    ``sum_t a[t] (x) x[t]`` equals eq. (8)'s ``sum_t delta[t] (x) e[t]`` with the
    trace of eq. (12): ``a[t] = c[t] (delta[t] + beta a[t+1])``,
    ``c[t] = 1 / (1 + f(v[t]) V_th)``, ``a[T+1] = 0``.
    """
    _, v = _unroll(current, p, num_steps)
    deltas, traces = [], []
    a_next = torch.zeros_like(v[0])
    for t in reversed(range(len(v))):
        f = p.surrogate_fn(v[t])
        delta = f * grad_spikes[t]
        a_next = (delta + p.decay * a_next) / (1 + f * p.v_th)
        deltas.append(delta)
        traces.append(a_next)
    if num_steps is not None:
        return sum(deltas[1:], deltas[0]), sum(traces[1:], traces[0])
    return torch.stack(deltas[::-1]), torch.stack(traces[::-1])


_backend: str | None = None
_compiled: dict = {}
_failed: set = set()  # (function, signature) whose compiled call failed: those run eagerly


def neuron_backend() -> str:
    """``"inductor"`` (fused by torch.compile) or ``"eager"``; decided once, on first use."""
    global _backend
    if _backend is None:
        wanted = os.environ.get("MTSNN_NEURON_BACKEND", "auto")
        if wanted not in BACKENDS:
            raise ValueError(f"MTSNN_NEURON_BACKEND={wanted!r}; choose one of {', '.join(BACKENDS)}")
        _backend = wanted
        if wanted == "auto":
            try:  # a C++ compiler (CPU) or Triton (GPU) must be there
                torch.compile(lambda x: x * 2 + 1)(torch.ones(8))
                _backend = "inductor"
            except Exception as e:  # any failure to compile means: run eagerly
                warnings.warn(
                    f"torch.compile is not usable here ({type(e).__name__}: {e}); the neuron runs eagerly (slower)",
                    stacklevel=2,
                )
                _backend = "eager"
    return _backend


def fused(fn):
    """``fn`` compiled by torch.compile when the inductor backend is in use, else ``fn``.

    :class:`Rows` hands the kernels ``[T, M]`` or ``[M]`` only, so a layer shape or batch
    size compiles at most twice: for the first ``M``, and once more for any other ``M``
    (torch.compile's automatic dynamic sizes). Compiled dynamic from the start, the kernel
    was 10-20% slower at T = 32 (neuron alone), so the common size keeps its own. A new ``T``,
    dtype, device or neuron setting compiles again. If a compiled call fails (a broken compiler or cache,
    say), that call, and later ones with the same dtypes, devices, ranks and ``T``, run
    eagerly, with one warning each; an error of the call itself then surfaces from ``fn``.
    """
    if neuron_backend() == "eager":
        return fn
    if fn not in _compiled:
        _compiled[fn] = _with_eager_fallback(torch.compile(fn), fn)
    return _compiled[fn]


def _signature(args) -> tuple:
    return tuple(
        (a.dtype, a.device.type, a.shape[0] if a.dim() > 1 else None) if isinstance(a, torch.Tensor) else a
        for a in args
    )


def _with_eager_fallback(compiled, eager):
    def call(*args):
        key = (eager, _signature(args))
        if key in _failed:
            return eager(*args)
        try:
            return compiled(*args)
        except torch.cuda.OutOfMemoryError:  # (torch.OutOfMemoryError only from torch 2.5)
            raise
        except Exception as e:  # compile failures come as many exception types
            # An error of the call itself (bad shapes, say) raises again here, and nothing is
            # remembered; only if the eager call works was the compiler at fault
            result = eager(*args)
            _failed.add(key)
            warnings.warn(
                f"compiling {eager.__name__} failed ({type(e).__name__}: {str(e)[:200]}); "
                "calls like this one run eagerly from now on",
                stacklevel=2,
            )
            return result

    return call


class Rows:
    """A current seen by the kernels as rows ``[T, M]`` (or ``[M]`` under direct input) in its
    own memory order, and the way back.

    The neuron is element-wise, so its kernels need no more than that: two ranks in all and
    one dynamic size, whatever the layer's shape, batch size or layout (torch.compile would
    otherwise compile again for each, and stop at its recompile limit, 8). The memory order
    (strides, largest first) makes the rows a view, not a copy, of a channels-last current,
    and the spikes come back in the current's layout.
    """

    def __init__(self, current: torch.Tensor, num_steps: int | None):
        self.lead = 0 if num_steps is not None else 1  # dims kept in front: time, unless direct
        rest = sorted(range(self.lead, current.dim()), key=lambda d: -current.stride()[d])
        self.order = list(range(self.lead)) + rest
        self.sizes = [current.shape[d] for d in self.order]
        self.steps = num_steps if num_steps is not None else current.shape[0]
        # the order of a [T, ...] output (spikes, their gradient): time first
        self.time_order = self.order if self.lead else [0] + [d + 1 for d in self.order]

    @staticmethod
    def _flat(x: torch.Tensor, order: list[int], lead: int) -> torch.Tensor:
        x = x.permute(order)
        # detached: a fresh tensor, not a view, or torch.compile would guard on the view's base
        return x.reshape(*x.shape[:lead], -1).detach()

    @staticmethod
    def _back(flat: torch.Tensor, sizes: list[int], order: list[int]) -> torch.Tensor:
        inverse = sorted(range(len(order)), key=order.__getitem__)
        return flat.view(sizes).permute(inverse)

    def current(self, current: torch.Tensor) -> torch.Tensor:
        return self._flat(current, self.order, self.lead)

    def time_major(self, x: torch.Tensor) -> torch.Tensor:
        """A ``[T, ...]`` tensor shaped like the spikes (their gradient, say) as ``[T, M]``."""
        return self._flat(x, self.time_order, 1)

    def spikes(self, flat: torch.Tensor) -> torch.Tensor:
        """``[T, M]`` back to ``[T, ...]``."""
        return self._back(flat, [self.steps] + self.sizes[self.lead :], self.time_order)

    def like_current(self, flat: torch.Tensor) -> torch.Tensor:
        """A gradient ``[T, M]`` (or ``[M]``) back to the current's shape."""
        return self._back(flat, self.sizes, self.order)


class _LIFFunction(torch.autograd.Function):
    """The neuron over all steps with a hand-written BPTT backward (no per-step autograd graph)."""

    @staticmethod
    def forward(ctx, current, p: LIFParams, num_steps):
        rows = Rows(current, num_steps)
        flat = rows.current(current)
        ctx.save_for_backward(flat)
        ctx.p, ctx.num_steps, ctx.rows = p, num_steps, rows
        return rows.spikes(fused(lif_forward)(flat, p, num_steps))

    @staticmethod
    def backward(ctx, grad_spikes):
        (flat,) = ctx.saved_tensors
        rows = ctx.rows
        grad = fused(bptt_backward)(rows.time_major(grad_spikes), flat, ctx.p, ctx.num_steps)
        return rows.like_current(grad), None, None


def check_time_major(x: torch.Tensor, what: str = "input") -> None:
    if x.dim() < 2:
        raise ValueError(f"{what} must be shaped [T, B, ...] (time first, at least 2 dims), got shape {tuple(x.shape)}")


class MultiThresholdLIF(nn.Module):
    r"""Multi-threshold LIF neuron layer (no parameters, no hidden state between calls).

    .. math::

        v[t] = (1 - 1/\tau_m) u[t-1] + I[t],\quad
        s[t] = \mathrm{clip}(\lfloor v[t]/V_{th} \rfloor, 0, S_{max}),\quad
        u[t] = v[t] - s[t] V_{th}

    Args:
        v_th: threshold ``V_th`` (Table 1: 10).
        tau_m: membrane time constant in steps (Table 1: 10); leak ``1 - 1/tau_m``.
        s_max: most spikes per step (Table 1: 15). ``1`` is the ordinary LIF.
        surrogate: ``"f1"``, ``"f2"`` (Table 1), ``"f3"``, ``"rectangular"``,
            ``"sigmoid"`` or ``"arctan"``; see :mod:`mtsnn.surrogate`.
        alpha_h: surrogate height (Table 1: 1).
        alpha_w: surrogate width (Table 1: 20).
        grad_mode: ``"bptt-detach"`` or ``"bptt"``. ``"paper"`` needs the
            weight layer that feeds the neuron: use
            :class:`mtsnn.layers.SpikingLinear` or :class:`mtsnn.layers.SpikingConv2d`.

    Input: currents ``[T, B, ...]``, time first. Output: spike counts of the
    same shape (integer values), float32 for float16/bfloat16 currents (the membrane
    integrates in float32, as under autocast) and the input's dtype otherwise. Every call
    starts from rest.

    Example (25 fires 2 and keeps 5, then 0.9 * 5 + 25 = 29.5 fires 2; 160 is clipped at 15):

    >>> neuron = MultiThresholdLIF()
    >>> neuron(torch.tensor([[[25.0, 4.0, 160.0]], [[25.0, 4.0, 160.0]]])).tolist()
    [[[2.0, 0.0, 15.0]], [[2.0, 0.0, 15.0]]]
    """

    def __init__(
        self,
        v_th: float = LIFParams.v_th,
        tau_m: float = LIFParams.tau_m,
        s_max: int = LIFParams.s_max,
        surrogate: str = LIFParams.surrogate,
        alpha_h: float = LIFParams.alpha_h,
        alpha_w: float = LIFParams.alpha_w,
        grad_mode: str = LIFParams.grad_mode,
    ):
        super().__init__()
        self.params = LIFParams(v_th, tau_m, s_max, surrogate, alpha_h, alpha_w, grad_mode)
        if grad_mode == "paper":
            raise ValueError(
                "grad_mode='paper' needs the weight layer that feeds the neuron "
                "(eq. 12's trace); use mtsnn.SpikingLinear or mtsnn.SpikingConv2d"
            )

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        check_time_major(current, "current")
        return _LIFFunction.apply(current, self.params, None)

    def step(self, current: torch.Tensor, u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for streaming: returns ``(s[t], u[t])``; pass ``u=None`` at the first step."""
        return lif_step(current, torch.zeros_like(current) if u is None else u, self.params)

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"v_th={p.v_th}, tau_m={p.tau_m}, s_max={p.s_max}, surrogate={p.surrogate!r}, "
            f"alpha_h={p.alpha_h}, alpha_w={p.alpha_w}, grad_mode={p.grad_mode!r}"
        )
