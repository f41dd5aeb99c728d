"""The fused path (torch.compile of the neuron's functional core) equals the eager path."""

import pytest
import torch

from mtsnn import neuron
from mtsnn.neuron import LIFParams, bptt_backward, lif_forward, paper_backward
from mtsnn.surrogate import NAMES


def compiled(fn):
    torch._dynamo.reset()  # a fresh compile per case: no silent fall-back past the recompile limit
    return torch.compile(fn, fullgraph=True)  # fullgraph: fails rather than run pieces eagerly


def inputs(seed=0):
    torch.manual_seed(seed)
    current = torch.randn(3, 4, 33) * 25  # odd sizes: vectorised loops plus their tails
    return current, torch.randn_like(current)


@pytest.mark.parametrize("surrogate", NAMES)
def test_fused_forward_and_paper_backward(surrogate):
    p = LIFParams(surrogate=surrogate, grad_mode="paper")
    current, grad = inputs()
    assert torch.equal(compiled(lif_forward)(current, p), lif_forward(current, p))
    for got, want in zip(compiled(paper_backward)(grad, current, p), paper_backward(grad, current, p)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad_mode", ["bptt", "bptt-detach"])
@pytest.mark.parametrize("surrogate", NAMES)
def test_fused_bptt_backward(surrogate, grad_mode):
    p = LIFParams(surrogate=surrogate, grad_mode=grad_mode, alpha_h=0.1)
    current, grad = inputs(1)
    torch.testing.assert_close(
        compiled(bptt_backward)(grad, current, p), bptt_backward(grad, current, p), rtol=1e-5, atol=1e-6
    )


def test_direct_input_fused():
    # one current held for 3 steps: forward as if it were repeated, gradients summed over the steps
    p, steps = LIFParams(grad_mode="paper"), 3
    current = torch.randn(4, 10) * 30
    grad = torch.randn(steps, 4, 10)
    repeated = current.expand(steps, 4, 10)
    assert torch.equal(compiled(lif_forward)(current, p, steps), lif_forward(repeated, p))
    for got, want in zip(compiled(paper_backward)(grad, current, p, steps), paper_backward(grad, repeated, p)):
        torch.testing.assert_close(got, want.sum(0), rtol=1e-5, atol=1e-6)
    p = LIFParams(grad_mode="bptt-detach")
    torch.testing.assert_close(
        compiled(bptt_backward)(grad, current, p, steps), bptt_backward(grad, repeated, p).sum(0), rtol=1e-5, atol=1e-6
    )


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(neuron, "_backend", None)
    monkeypatch.setenv("MTSNN_NEURON_BACKEND", "eager")
    assert neuron.neuron_backend() == "eager" and neuron.fused(lif_forward) is lif_forward
    monkeypatch.setattr(neuron, "_backend", None)
    monkeypatch.setenv("MTSNN_NEURON_BACKEND", "inductor")
    assert neuron.neuron_backend() == "inductor" and neuron.fused(lif_forward) is not lif_forward
    monkeypatch.setattr(neuron, "_backend", None)
    monkeypatch.setenv("MTSNN_NEURON_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="gpu-please"):
        neuron.neuron_backend()


def test_a_failing_compile_falls_back_for_calls_like_it_only(monkeypatch):
    monkeypatch.setattr(neuron, "_backend", "inductor")
    monkeypatch.setattr(neuron, "_failed", set())
    tried = []

    def broken_for_two_steps(current, p, num_steps):
        tried.append(current.shape[0])
        if current.shape[0] == 2:
            raise RuntimeError("C++ compile error")
        return lif_forward(current, p, num_steps)

    run = neuron._with_eager_fallback(broken_for_two_steps, lif_forward)
    with pytest.warns(UserWarning, match="compiling lif_forward failed .*C\\+\\+ compile error"):
        spikes = run(torch.full((2, 3), 25.0), LIFParams(), None)
    assert spikes.tolist() == [[2.0] * 3] * 2  # eager: 25 -> 2 spikes, then 0.9 * 5 + 25 -> 2
    # The same kind of call (T = 2, float32, CPU) runs eagerly without trying again or warning
    # again; another T still tries the compiled function.
    run(torch.full((2, 5), 25.0), LIFParams(), None)
    run(torch.full((3, 3), 25.0), LIFParams(), None)
    assert tried == [2, 3] and neuron.neuron_backend() == "inductor"


def test_out_of_memory_is_raised_and_keeps_the_compiled_backend(monkeypatch):
    monkeypatch.setattr(neuron, "_backend", "inductor")

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        neuron._with_eager_fallback(out_of_memory, lif_forward)(torch.ones(2, 3), LIFParams(), None)
    assert neuron.neuron_backend() == "inductor"


def test_an_error_of_the_call_itself_is_raised_and_keeps_the_compiled_backend(monkeypatch):
    monkeypatch.setattr(neuron, "_backend", "inductor")
    run = neuron._with_eager_fallback(lif_forward, lif_forward)  # the "compiled" one fails alike
    with pytest.raises(AttributeError, match="decay"):
        run(torch.ones(2, 3), None, None)  # no neuron settings: eager fails too
    assert neuron.neuron_backend() == "inductor"


def count_compiles(monkeypatch):
    """Compile with inductor from here on, counting the graphs torch.compile builds."""
    monkeypatch.setattr(neuron, "_backend", "inductor")
    monkeypatch.setattr(neuron, "_compiled", {})
    torch._dynamo.reset()
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=counting, **kw))
    return graphs


def test_twelve_shapes_compile_twice_per_function_and_never_reach_the_recompile_limit(monkeypatch, caplog):
    from mtsnn import MultiThresholdLIF

    graphs = count_compiles(monkeypatch)
    shapes = [
        (2, 8, 10),
        (2, 16, 10),
        (2, 4, 3, 5, 5),
        (2, 6, 3, 5, 5),
        (2, 32, 100),
        (2, 3, 7),
        (2, 9, 2, 4, 4),
        (2, 5, 11),
        (2, 2, 3, 3),
        (2, 7, 3, 3),
        (2, 1, 4, 6, 6, 2),
        (2, 13),
    ]
    for shape in shapes:
        current = (torch.randn(*shape) * 20).requires_grad_()
        spikes = MultiThresholdLIF()(current)
        spikes.backward(torch.ones_like(spikes))
        assert spikes.shape == shape and current.grad.shape == shape
    # forward and backward: one graph for the first size, one dynamic graph for all others
    assert len(graphs) == 4
    assert not [r for r in caplog.records if "recompile" in r.getMessage().lower()]


def test_a_channels_last_current_is_read_in_place_and_its_spikes_keep_the_layout(monkeypatch):
    count_compiles(monkeypatch)
    current = (torch.randn(2 * 3, 4, 5, 6) * 30).contiguous(memory_format=torch.channels_last)
    current = current.unflatten(0, (2, 3)).requires_grad_()  # [T, B, C, H, W], channels innermost
    spikes = neuron.MultiThresholdLIF()(current)
    plain = current.detach().contiguous().requires_grad_()
    want = lif_forward(plain, LIFParams())
    assert torch.equal(spikes, want) and spikes.stride() == current.stride()
    grad = torch.randn_like(want)
    spikes.backward(grad)
    want_grad = bptt_backward(grad, plain.detach(), LIFParams())
    torch.testing.assert_close(current.grad, want_grad, rtol=1e-5, atol=1e-6)
