"""The neuron's forward pass on hand-computed cases (paper eqs. 4-5), its single step and its errors."""

import pytest
import torch

from mtsnn import MultiThresholdLIF, lif_step
from mtsnn.neuron import LIFParams


def run(currents, **kwargs):
    neuron = MultiThresholdLIF(**kwargs)
    current = torch.tensor(currents, dtype=torch.float64).reshape(len(currents), 1, 1)
    return neuron(current).flatten().tolist()


def test_sparse_input_integrates_and_leaks():
    # beta = 0.9. v: 5 -> 0.9*5+5 = 9.5 -> 0.9*9.5 = 8.55 -> 0.9*8.55+12 = 19.695 (one spike)
    assert run([5, 5, 0, 12]) == [0, 0, 0, 1]


def test_dense_input_multi_spike_and_soft_reset():
    # v=35 -> s=3, u=5; v=4.5 -> 0; v=0.9*4.5+27=31.05 -> 3
    assert run([35, 0, 27]) == [3, 0, 3]


def test_lif_drops_what_multi_threshold_keeps():
    # s_max=1: v=35 -> 1, u=25; v=22.5 -> 1, u=12.5; v=11.25+27=38.25 -> 1
    assert run([35, 0, 27], s_max=1) == [1, 1, 1]


def test_saturation_at_s_max_keeps_the_excess():
    # s_max=3: v=100 -> 3, u=70; v=63 -> 3, u=33; v=29.7 -> 2
    assert run([100, 0, 0], s_max=3) == [3, 3, 2]


def test_leak_with_short_time_constant():
    # tau_m=2 -> beta=0.5: v=8 -> 0; v=4+8=12 -> 1
    assert run([8, 8], tau_m=2) == [0, 1]


def test_negative_potential_and_exact_threshold_multiples():
    assert run([-5, 16]) == [0, 1]  # v = -4.5 + 16 = 11.5
    assert run([20]) == [2] and run([9.999]) == [0] and run([150]) == [15] and run([1e6]) == [15]


def test_s_max_one_is_the_ordinary_lif():
    torch.manual_seed(0)
    current = torch.randn(6, 4, 32, dtype=torch.float64) * 15
    u = torch.zeros(4, 32, dtype=torch.float64)
    expected = []
    for t in range(6):  # Heaviside firing, subtract the threshold
        v = 0.9 * u + current[t]
        s = (v >= 10).double()
        u = v - 10 * s
        expected.append(s)
    assert torch.equal(MultiThresholdLIF(s_max=1)(current), torch.stack(expected))


@pytest.mark.parametrize(
    "dtype, out",
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_output_shape_dtype_and_integer_values(dtype, out):
    current = (torch.randn(2, 3, 4, 5) * 40).to(dtype)
    s = MultiThresholdLIF()(current)
    assert s.shape == current.shape and s.dtype == out
    assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 15


def test_each_call_starts_from_rest():
    neuron = MultiThresholdLIF()  # V_th 10, leak 0.9
    # 25, 25 leaves u = 25 - 20 = 5, then 0.9 * 5 + 25 - 20 = 9.5 behind it
    assert neuron(torch.full((2, 1), 25.0)).flatten().tolist() == [2.0, 2.0]
    # from rest: v = 7 -> 0 spikes, then 0.9 * 7 + 7 = 13.3 -> 1; had u = 9.5 stayed,
    # the first step would have been 0.9 * 9.5 + 7 = 15.55 -> 1
    assert neuron(torch.full((2, 1), 7.0)).flatten().tolist() == [0.0, 1.0]


def test_step_matches_the_multi_step_forward():
    torch.manual_seed(1)
    current = torch.randn(5, 3, 8) * 20
    neuron = MultiThresholdLIF(s_max=4)
    u, steps = None, []
    for t in range(5):
        s, u = neuron.step(current[t], u)
        steps.append(s)
    assert torch.equal(torch.stack(steps), neuron(current))
    s, u = lif_step(torch.tensor([35.0]), torch.tensor([0.0]), LIFParams())
    assert s.item() == 3 and u.item() == 5


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"s_max": 0}, "s_max=0"),
        ({"v_th": 0.0}, "v_th=0.0"),
        ({"v_th": -1.0}, "v_th=-1.0"),
        ({"tau_m": 0.5}, "tau_m=0.5"),
        ({"surrogate": "f9"}, "'f9'"),
        ({"grad_mode": "magic"}, "'magic'"),
        ({"s_max": 2.5}, "s_max=2.5"),
        ({"alpha_w": 0.0}, "alpha_w"),
    ],
)
def test_bad_settings_name_the_value(kwargs, names):
    with pytest.raises(ValueError, match=names.replace("(", r"\(")):
        MultiThresholdLIF(**kwargs)


def test_paper_mode_needs_a_weight_layer():
    with pytest.raises(ValueError, match="SpikingLinear"):
        MultiThresholdLIF(grad_mode="paper")


def test_input_needs_time_and_batch_dims():
    with pytest.raises(ValueError, match=r"\[T, B, ...\].*\(5,\)"):
        MultiThresholdLIF()(torch.ones(5))


def _saved_for_backward(fn):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return saved


def test_the_neuron_keeps_only_its_input_current_for_backward():
    current = (torch.randn(2, 3, 5) * 20).requires_grad_()
    saved = _saved_for_backward(lambda: MultiThresholdLIF()(current))
    assert [t.data_ptr() for t in saved] == [current.data_ptr()]  # no v, no surrogate terms


def test_a_paper_block_keeps_its_input_weight_and_current():
    from mtsnn.layers import SpikingLinear

    block, x = SpikingLinear(4, 5), torch.rand(2, 3, 4).requires_grad_()
    saved = _saved_for_backward(lambda: block(x))
    # the input, the current (as the kernels' rows [T, B * 5]) and the weight: nothing else
    assert sorted(tuple(t.shape) for t in saved) == [(2, 3, 4), (2, 15), (5, 4)]
