"""Surrogate curves against the paper's formulas (eqs. 14-16), written out here term by term."""

import math

import pytest
import torch

from mtsnn import surrogate
from reference import full_f1, full_f2


def grid(v_th, s_max):
    return torch.linspace(-3 * v_th, (s_max + 3) * v_th, 20001, dtype=torch.float64)


def test_f2_hand_values_at_default_settings():
    f = surrogate.get("f2")  # Table 1: alpha_h=1, alpha_w=20, v_th=10, s_max=15
    v = torch.tensor([10.0, 15.0, 0.0], dtype=torch.float64)
    expected = [
        1 + math.exp(-5) + math.exp(-20),  # at the first threshold
        2 * math.exp(-1.25) + math.exp(-11.25) + math.exp(-31.25),  # midway between thresholds 1, 2
        math.exp(-5) + math.exp(-20),
    ]  # below every threshold
    assert f(v).tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_f1_hand_values_heights_grow_widths_shrink():
    f = surrogate.get("f1", s_max=3)
    v = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    # term i: i * exp(-(v - 10 i)^2 * i / 20)
    expected = [
        1 + 2 * math.exp(-10) + 3 * math.exp(-60),
        math.exp(-5) + 2 + 3 * math.exp(-15),
        math.exp(-20) + 2 * math.exp(-10) + 3,
    ]
    assert f(v).tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("alpha_w", [0.2, 2.0, 20.0, 200.0, 2000.0])
@pytest.mark.parametrize("s_max", [1, 3, 7, 15, 40])
@pytest.mark.parametrize("alpha_h", [1.0, 0.3])
def test_truncated_sums_match_the_full_sums(alpha_w, s_max, alpha_h):
    v_th = 10.0
    v = grid(v_th, s_max)
    got2 = surrogate.get("f2", alpha_h=alpha_h, alpha_w=alpha_w, v_th=v_th, s_max=s_max)(v)
    torch.testing.assert_close(
        got2, full_f2(v, alpha_h, alpha_w, v_th, s_max), rtol=1e-6, atol=1e-150
    )  # atol: terms below sqrt(tiny) are 0
    got1 = surrogate.get("f1", alpha_h=alpha_h, alpha_w=alpha_w, v_th=v_th, s_max=s_max)(v)
    want1 = full_f1(v, alpha_h, alpha_w, v_th, s_max)
    inside = v <= (s_max + 0.5) * v_th  # the relative bound's range; above it the bound is absolute
    torch.testing.assert_close(
        got1[inside], want1[inside], rtol=1e-6, atol=1e-150
    )  # atol: terms below sqrt(tiny) are 0
    assert (got1[~inside] - want1[~inside]).abs().max() <= s_max * alpha_h * 1e-7


@pytest.mark.parametrize("alpha_w", [2.0, 20.0, 200.0])
def test_f2_in_float32_is_as_accurate_as_its_input(alpha_w):
    # float32 f2 takes two exponentials per element (ratios between neighbouring terms);
    # against the full sum in float64 at the same (float32) potentials, what remains is
    # the rounding of v / v_th, amplified by at most 2 rho |d| <= rho: a few 1e-5 at worst.
    v = grid(10.0, 15).float().double()
    want = full_f2(v, 1.0, alpha_w, 10.0, 15)
    got = surrogate.get("f2", alpha_w=alpha_w)(v.float()).double()
    kept = want > 1e-15
    rho = 100.0 / alpha_w
    assert ((got[kept] - want[kept]).abs() / want[kept]).max() < rho * 2e-5
    assert (got[~kept] <= 2e-15).all()


def test_window_does_not_grow_with_s_max():
    k15 = surrogate.gaussian_window("f2", 20.0, 10.0, 15)
    assert k15 == surrogate.gaussian_window("f2", 20.0, 10.0, 1000) == 2
    assert surrogate.gaussian_window("f1", 20.0, 10.0, 1000) == 2
    # the documented bound itself: 2 * sum_{m>2} exp(-m (m-1) * 5) <= 1e-7, but not for k = 1
    assert 2 * math.exp(-2 * 1 * 5) > 1e-7 >= 2 * sum(math.exp(-m * (m - 1) * 5) for m in range(3, 50))


def test_f3_trapezoid_pieces_and_edges():
    f = surrogate.get("f3", alpha_h=2.0, v_th=10.0, s_max=3)
    points = [-0.001, 0.0, 5.0, 9.999, 10.0, 20.0, 29.999, 30.0, 35.0, 39.999, 40.0, 55.0]
    expected = [0, 0, 1.0, 1.9998, 2, 2, 2, 2, 1.0, 0.0002, 0, 0]
    got = f(torch.tensor(points, dtype=torch.float64)).tolist()
    assert got == pytest.approx(expected, abs=1e-9)


def test_f3_with_s_max_one_is_a_triangle():
    f = surrogate.get("f3", v_th=10.0, s_max=1)
    got = f(torch.tensor([0.0, 5.0, 10.0, 15.0, 20.0], dtype=torch.float64)).tolist()
    assert got == pytest.approx([0, 0.5, 1.0, 0.5, 0])


def test_comparison_curves_match_f2s_peak_and_width():
    alpha_w = 20.0
    width = math.sqrt(math.pi * alpha_w)  # area/height of one f2 term
    at = lambda name, x: surrogate.get(name, alpha_w=alpha_w)(torch.tensor([x], dtype=torch.float64)).item()  # noqa: E731
    for name in ("rectangular", "sigmoid", "arctan"):
        assert at(name, 30.0) == pytest.approx(1.0)  # peak alpha_h at every threshold
    assert at("rectangular", 30 + 0.49 * width) == 1.0 and at("rectangular", 30 + 0.51 * width) == 0.0
    # sigmoid bump 4 sig(d/s)(1 - sig(d/s)), s = width/4 (area width); arctan 1/(1+(d/s)^2), s = width/pi
    assert at("sigmoid", 30 + width / 4) == pytest.approx(4 * math.exp(-1) / (1 + math.exp(-1)) ** 2)
    assert at("arctan", 30 - width / math.pi) == pytest.approx(0.5)
    assert at("sigmoid", 0.0) == pytest.approx(4 * math.exp(-10 / (width / 4)) / (1 + math.exp(-10 / (width / 4))) ** 2)


def test_every_name_is_selectable_and_unknown_names_fail():
    v = torch.linspace(-10, 200, 50)
    for name in surrogate.NAMES:
        out = surrogate.get(name)(v)
        assert out.shape == v.shape and torch.isfinite(out).all() and (out >= 0).all()
    with pytest.raises(ValueError, match="'gauss'"):
        surrogate.get("gauss")


@pytest.mark.parametrize("name", ["f1", "f2", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponential_tails_stop_at_zero_not_subnormal(name, dtype):
    # Far from every threshold the true value underflows; anything left between 0 and
    # sqrt(tiny) would make gradient products subnormal (slow on CPUs), so it must be 0.
    tiny = torch.finfo(dtype).tiny
    v = torch.linspace(-1e4, 1e4, 200001, dtype=dtype)
    out = surrogate.get(name, alpha_h=0.5)(v)
    nonzero = out[out != 0]
    assert out[0] == 0 and out[-1] == 0  # 1000 thresholds away
    assert nonzero.min() >= 0.5 * math.sqrt(tiny) * 0.99
    grad = out * 1e-15  # a small upstream gradient stays normal or exactly zero
    assert not ((grad != 0) & (grad.abs() < tiny)).any()
