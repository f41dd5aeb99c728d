"""Export (issue 17): Sinabs as the independent implementation of the neuron, NIR round trips,
foreign NIR graphs against a slow explicit reference, and the shipped models."""

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from mtsnn import data, from_spec, pretrained, zoo
from mtsnn.checkpoint import CheckpointError, load_tensors, save_tensors
from mtsnn.config import preset
from mtsnn.experiments import cli
from mtsnn.experiments.train import Run
from mtsnn.export import (
    RESET,
    S_MAX,
    ExportError,
    from_nir,
    from_sinabs,
    load_sinabs,
    run_sinabs,
    save_sinabs,
    to_nir,
    to_sinabs,
    write_nir,
)
from mtsnn.layers import SpikingBlock
from mtsnn.models import SpikingNetwork
from runs import SHARED

sinabs = pytest.importorskip("sinabs")
nir = pytest.importorskip("nir")
needs_mnist = pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason=f"real MNIST not found under {SHARED}")


def mnist_test(limit: int = 0):
    test = data.load("mnist", "test", root=SHARED)
    return data.DeviceLoader(test.subset(limit) if limit else test, 1000, train=False)


def counts_and_accuracy(forward, loader):
    """Every output count of ``forward`` over the loader, and its accuracy (%)."""
    outputs, correct = [], 0
    with torch.no_grad():
        for images, labels in loader.epoch(0):
            out = forward(images)
            outputs.append(out)
            correct += (out.sum(0).argmax(1) == labels).sum().item()
    outputs = torch.cat(outputs, 1)
    return outputs, 100 * correct / outputs.shape[1]


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    """mnist-cnn trained for one short epoch here: weights that have learned, for a CNN check."""
    if not (SHARED / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found under {SHARED}")
    cfg = preset("mnist-cnn", epochs=1, train_limit=2048, test_limit=200, data_root=str(SHARED), output_floor=1.0)
    run = Run.start(cfg, tmp_path_factory.mktemp("cnn") / "run", log=lambda *a: None)
    run.fit()
    return run.model.eval()


@needs_mnist
def test_a_shipped_mlp_and_its_sinabs_twin_give_identical_counts_on_the_whole_test_set():
    net = pretrained("mnist-mlp")
    ours, acc = counts_and_accuracy(net, mnist_test())
    theirs, acc_sinabs = counts_and_accuracy(lambda x: run_sinabs(to_sinabs(net), x), mnist_test())
    assert torch.equal(ours, theirs) and acc == acc_sinabs == zoo.record("mnist-mlp")["test_acc"]
    assert ours.max() > 1  # multi-threshold: counts above one spike per step do occur


def sinabs_layer_counts(model, images):
    """The spike counts ``[T, B, ...]`` of every neuron layer of a Sinabs twin, input to output."""
    counts = []
    hooks = [m.register_forward_hook(lambda m, i, out: counts.append(out)) for m in model if hasattr(m, "spike_fn")]
    try:
        run_sinabs(model, images)
    finally:
        for hook in hooks:
            hook.remove()
    return [c.unflatten(0, (images.shape[0], -1)).transpose(0, 1) for c in counts]


@needs_mnist
def test_a_trained_cnn_and_its_sinabs_twin_saved_or_not_give_identical_counts_in_every_layer_over_the_test_set(
    trained_cnn, tmp_path
):
    # Every layer, not only the output: a convolution summing in another order (the twin's
    # weights once were copied, and once were loaded back from a file, into a layout other
    # than mtsnn's channels-last) moved 1 of 235 million first-layer counts and 4 in each
    # layer after, and the output check alone passed.
    save_sinabs(trained_cnn, tmp_path / "twin.safetensors")
    twins = {"to_sinabs": to_sinabs(trained_cnn), "load_sinabs": load_sinabs(tmp_path / "twin.safetensors")}
    compared = correct = 0
    with torch.no_grad():
        for images, labels in mnist_test().epoch(0):
            ours = [call.output for call in trained_cnn.trace(images) if isinstance(call.layer, SpikingBlock)]
            for twin, model in twins.items():
                theirs = sinabs_layer_counts(model, images)
                assert len(ours) == len(theirs) == 4
                for layer, (a, b) in enumerate(zip(ours, theirs)):
                    assert torch.equal(a, b), f"{twin}, layer {layer}: {(a != b).sum().item()} of {a.numel()} differ"
            compared += len(labels)
            correct += (ours[-1].sum(0).argmax(1) == labels).sum().item()
    assert compared == 10_000 and correct > 5_000  # the network has learned: a real test of its counts
    model = twins["load_sinabs"]
    assert type(model[1]).__name__ == "LIFSqueeze" and model[1].spike_fn.max_num_spikes_per_bin == 15


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_an_integrate_and_fire_network_becomes_sinabs_iaf_and_comes_back_exactly(pooling):
    torch.manual_seed(1)
    net = from_spec("8C3-P2-16C3-32", (1, 12, 12), 10, tau_m=math.inf, s_max=3, v_th=2.0, pooling=pooling).eval()
    model = to_sinabs(net, num_steps=5)
    assert type(model[1]).__name__ == "IAFSqueeze"
    assert type(model[2]).__name__ == {"avg": "AvgPool2d", "max": "MaxPool2d"}[pooling]
    images = torch.rand(64, 1, 12, 12) * 4
    with torch.no_grad():
        expected = net(images, num_steps=5)
        assert expected.max() == 3  # S_max reached: the clip matters
        assert torch.equal(run_sinabs(model, images), expected)
        back = from_sinabs(model)
        assert back.num_steps == 5 and torch.equal(back(images), expected)
        assert [b.params.s_max for b in back.blocks()] == [3] * 4 and back.blocks()[0].params.tau_m == math.inf


def test_a_sinabs_file_without_its_layer_list_or_with_an_unknown_layout_or_stray_tensors_is_refused(tmp_path):
    net = from_spec("4C3-P2-8", (1, 6, 6), 3)
    path = tmp_path / "twin.safetensors"
    save_sinabs(net, path)
    tensors, metadata = load_tensors(path)
    broken = {
        "no layer list": (tensors, {k: v for k, v in metadata.items() if k != "sinabs_layers"}),
        "unknown layout": (tensors, {**metadata, "memory_format": "channels_first"}),
        "stray tensor": ({**tensors, "9.weight": torch.zeros(2)}, metadata),
    }
    messages = ["no sinabs_layers metadata", "unknown memory_format 'channels_first'", "do not fit its layer list"]
    for (name, (t, m)), message in zip(broken.items(), messages):
        save_tensors(tmp_path / f"{name}.safetensors", t, m)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors: .*{message}"):
            load_sinabs(tmp_path / f"{name}.safetensors")


def test_sinabs_layers_mtsnn_cannot_represent_are_refused_by_name():
    sl = sinabs.layers
    from sinabs.activation import MaxSpike, MembraneReset, MultiSpike

    cases = [
        ([torch.nn.Linear(4, 3), sl.IAFSqueeze(spike_fn=MultiSpike, num_timesteps=2)], "no bound on spikes per step"),
        (
            [torch.nn.Linear(4, 3), sl.IAFSqueeze(spike_fn=MaxSpike(2), reset_fn=MembraneReset(), num_timesteps=2)],
            "resets by",
        ),
        ([torch.nn.Linear(4, 3), sl.LIFSqueeze(tau_mem=5.0, spike_fn=MaxSpike(2), num_timesteps=2)], "norm_input"),
        ([torch.nn.Linear(4, 3), sl.IAFSqueeze(spike_fn=MaxSpike(2), min_v_mem=-1.0, num_timesteps=2)], "min_v_mem"),
        ([torch.nn.Conv2d(1, 2, 3, stride=2), sl.IAFSqueeze(spike_fn=MaxSpike(2), num_timesteps=2)], "stride"),
        (
            [
                torch.nn.Conv2d(1, 2, 3, padding=1),
                sl.IAFSqueeze(spike_fn=MaxSpike(2), num_timesteps=2),
                sl.SumPool2d(2),
            ],
            "sums spikes",
        ),
        (
            [torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), sl.IAFSqueeze(spike_fn=MaxSpike(2), num_timesteps=2)],
            "two weight layers",
        ),
        (
            [torch.nn.Linear(4, 3), sl.IAFSqueeze(spike_fn=MaxSpike(2), num_timesteps=2), torch.nn.Linear(3, 2)],
            r"layer 2 \(Linear\): the last weight layer has no neuron after it",
        ),
    ]
    for layers, message in cases:
        with pytest.raises(ExportError, match=message):
            from_sinabs(torch.nn.Sequential(*layers))


@needs_mnist
def test_nir_round_trips_of_a_shipped_model_and_a_cnn_give_identical_spikes(trained_cnn, tmp_path):
    for net, shape in ((pretrained("mnist-mlp"), (1, 28, 28)), (trained_cnn, (1, 28, 28))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nir.write(tmp_path / "net.nir", to_nir(net, shape))
        again = from_nir(tmp_path / "net.nir")
        ours, _ = counts_and_accuracy(net, mnist_test(2000))
        theirs, _ = counts_and_accuracy(again, mnist_test(2000))
        assert torch.equal(ours, theirs)
        assert [b.params for b in again.blocks()] == [b.params for b in net.blocks()]
        assert again.input_shape == shape  # so that it streams: again.initial_state(batch_size)


def test_a_nir_graph_is_drawn_for_the_input_shape_the_network_was_built_for(tmp_path):
    net = from_spec("4C3-P2-16", (3, 12, 12), 10)  # colour, not MNIST's (1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_nir(net, tmp_path / "net.nir")
        with pytest.raises(ExportError, match="needs input_shape: the network records none"):
            to_nir(SpikingNetwork(net.layers, net.num_steps))
    again = from_nir(tmp_path / "net.nir")
    assert again.input_shape == (3, 12, 12)
    images = torch.rand(5, 3, 12, 12) * 40
    with torch.no_grad():
        assert torch.equal(again(images), net(images))


def test_max_pooling_is_refused_by_nir_export_naming_the_layer():
    net = from_spec("8C3-P2-16C3-32", (1, 12, 12), 10, pooling="max")
    with pytest.raises(ExportError, match="NIR has no max pooling node .*pools by maximum"):
        to_nir(net, (1, 12, 12))


def test_the_graph_uses_standard_nodes_and_keeps_s_max_in_metadata_with_one_warning(trained_cnn):
    import mtsnn.export as export

    export._warned = False
    with pytest.warns(UserWarning, match="single-spike, reset-to-zero neuron") as said:
        graph = to_nir(trained_cnn)
        to_nir(trained_cnn)
    assert len([w for w in said if "single-spike" in str(w.message)]) == 1
    kinds = [type(node).__name__ for node in graph.nodes.values()]
    assert kinds == [
        "Input",
        "Conv2d",
        "LIF",
        "AvgPool2d",
        "Conv2d",
        "LIF",
        "AvgPool2d",
        "Flatten",
        "Affine",
        "LIF",
        "Affine",
        "LIF",
        "Output",
    ]
    assert graph.edges == list(zip(graph.nodes, list(graph.nodes)[1:]))
    lif = graph.nodes["1"]
    assert lif.metadata == {S_MAX: 15, RESET: "subtract"} and graph.metadata["mtsnn_num_steps"] == 2
    assert np.allclose(np.exp(-1 / lif.tau), 0.9) and np.all(lif.r == 1) and np.all(lif.v_threshold == 10)


def reference_single_spike_lif(x, layers, steps):
    """Slow and explicit: NIR's LIF discretised with one step as the unit, leak exp(-1/tau),
    input r (W x + b), one spike when v >= v_th, reset by subtracting v_th."""
    outputs = []
    v = [torch.zeros(w.shape[0]) for w, *_ in layers]
    for _ in range(steps):
        s = x
        for i, (w, b, tau, r, v_th) in enumerate(layers):
            v[i] = math.exp(-1 / tau) * v[i] + r * (s @ w.T + b)
            s = (v[i] >= v_th).float()
            v[i] = v[i] - s * v_th
        outputs.append(s)
    return torch.stack(outputs)


def foreign_graph(layers, **lif_changes):
    """An MLP graph as another library would write it with nir itself: plain LIF nodes, no mtsnn metadata."""
    nodes = {"input": nir.Input(input_type={"input": np.array([layers[0][0].shape[1]])})}
    for i, (w, b, tau, r, v_th) in enumerate(layers):
        n = w.shape[0]
        nodes[f"fc{i}"] = nir.Affine(weight=w.numpy(), bias=b.numpy())
        params = dict(tau=np.full(n, tau), r=np.full(n, r), v_leak=np.zeros(n), v_threshold=np.full(n, v_th))
        params.update({k: f(n) for k, f in lif_changes.items()})
        nodes[f"lif{i}"] = nir.LIF(**params)
    nodes["output"] = nir.Output(output_type={"output": np.array([layers[-1][0].shape[0]])})
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])))


def test_a_foreign_graph_imports_as_the_single_spike_neuron_it_describes():
    torch.manual_seed(2)
    tau = -1 / math.log(0.5)  # leak 0.5, exact in binary
    layers = [(torch.randn(20, 8), torch.randn(20), tau, 2.0, 1.0), (torch.randn(5, 20), torch.randn(5), tau, 2.0, 1.0)]
    net = from_nir(foreign_graph(layers), num_steps=6)
    x = torch.randn(100, 8)
    with torch.no_grad():
        got = net(x)
    expected = reference_single_spike_lif(x, layers, 6)
    assert torch.equal(got, expected) and expected.sum() > 0
    assert [b.params.s_max for b in net.blocks()] == [1, 1] and net.blocks()[0].params.tau_m == 2.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tau": lambda n: np.linspace(2, 3, n)}, "tau differs between neurons"),
        ({"v_leak": lambda n: np.ones(n)}, "leaks towards v_leak != 0"),
    ],
)
def test_a_foreign_graph_mtsnn_cannot_represent_is_refused_naming_the_node(change, message):
    layers = [(torch.randn(4, 3), torch.zeros(4), 5.0, 1.0, 1.0)]
    with pytest.raises(ExportError, match=f"node 'lif0': {message}"):
        from_nir(foreign_graph(layers, **change), num_steps=2)


def test_a_foreign_reset_to_v_reset_or_sum_pooling_or_no_step_count_is_refused():
    layers = [(torch.randn(4, 3), torch.zeros(4), 5.0, 1.0, 1.0)]
    graph = foreign_graph(layers)
    with pytest.raises(ExportError, match="give num_steps"):
        from_nir(graph)
    graph.nodes["lif0"].v_reset = np.zeros(4)  # as nir >= 1.0.5 writes every LIF
    with pytest.raises(ExportError, match="node 'lif0': resets to v_reset"):
        from_nir(graph, num_steps=2)
    pooled = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([1, 4, 4])}),
            "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
            "output": nir.Output(output_type={"output": np.array([1, 2, 2])}),
        },
        edges=[("input", "pool"), ("pool", "output")],
    )
    with pytest.raises(ExportError, match="node 'pool': NIR SumPool2d has no counterpart .*sums spikes"):
        from_nir(pooled, num_steps=2)
    unfinished = foreign_graph(layers)
    del unfinished.nodes["lif0"]
    unfinished.edges = [("input", "fc0"), ("fc0", "output")]
    with pytest.raises(ExportError, match="node 'fc0': the last weight layer has no neuron after it"):
        from_nir(unfinished, num_steps=2)


@needs_mnist
# mnist-cnn: batch norm folded into each block; -qat: weights read through a parametrization
@pytest.mark.parametrize("name", ["mnist-mlp", "mnist-cnn", "mnist-cnn-qat"])
def test_cli_export_writes_files_that_load_back_to_the_same_spikes(tmp_path, capsys, name):
    net = pretrained(name)
    images = next(iter(mnist_test(500).epoch(0)))[0]
    assert cli.main(["export", f"pretrained:{name}", "--to", "nir", str(tmp_path / "m.nir")]) == 0
    assert cli.main(["export", f"pretrained:{name}", "--to", "sinabs", str(tmp_path / "m.safetensors")]) == 0
    with torch.no_grad():
        expected = net(images)
        assert torch.equal(from_nir(tmp_path / "m.nir")(images), expected)
        assert torch.equal(run_sinabs(load_sinabs(tmp_path / "m.safetensors"), images), expected)
    out = capsys.readouterr().out
    assert "wrote" in out and f"nir: {name.removesuffix('-qat')}, " in out  # the preset


@needs_mnist
def test_eval_of_a_shipped_model_prints_its_recorded_accuracy_and_refuses_changed_weights(
    tmp_path, capsys, monkeypatch
):
    assert cli.main(["eval", "pretrained:fmnist-mlp", "--json", "--data-root", str(SHARED)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_acc"] == report["recorded_test_acc"] == zoo.record("fmnist-mlp")["test_acc"]
    shutil.copytree(zoo.folder(), tmp_path / "models")
    monkeypatch.setenv("MTSNN_MODELS", str(tmp_path / "models"))
    weights = tmp_path / "models" / "mnist-mlp.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-100] ^= 1
    weights.write_bytes(bytes(raw))
    assert cli.main(["eval", "pretrained:mnist-mlp"]) == 2
    assert f"{weights}: sha256" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="no pretrained model 'mnist-cnn-x'"):
        pretrained("mnist-cnn-x")


def test_every_snn_preset_but_cifar10_ships_a_model_that_loads_with_its_recorded_settings():
    assert set(zoo.available()) >= {"mnist-mlp", "mnist-cnn", "fmnist-mlp", "fmnist-cnn"}
    for name in zoo.available():
        net, cfg = zoo.load(name)
        kept = zoo.record(name)
        assert (cfg.spec, cfg.T, kept["preset"]) == (kept["spec"], kept["T"], cfg.preset)
        assert name == cfg.preset or (name == f"{cfg.preset}-qat" and cfg.qat)  # PRESET, or its int8-ready version
        assert sum(p.numel() for p in net.parameters()) > 0 and not net.training


def test_dropout_layers_are_left_out_of_every_export_and_of_the_integer_path(tmp_path):
    from mtsnn.integer import IntegerNetwork

    torch.manual_seed(0)
    net = from_spec("8C3-P2-32", (1, 8, 8), 10, dropout=0.5).eval()
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    normalised = (images.float() / 255 - 0.5) / 0.25
    expected = net(normalised * 4)
    assert expected.sum() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(tmp_path / "net.nir", to_nir(net, (1, 8, 8)))
    again = from_nir(tmp_path / "net.nir")  # the same network, no dropout layer in it
    assert "TimeDropout" not in [type(m).__name__ for m in again.layers]
    assert torch.equal(again(normalised * 4), expected)
    assert torch.equal(run_sinabs(to_sinabs(net), normalised * 4, net.num_steps), expected)
    integer = IntegerNetwork(net, mean=(0.5,), std=(0.25,))
    assert [type(layer).__name__ for layer in integer.layers] == [
        "IntegerBlock", "IntegerPool", "IntegerFlatten", "IntegerBlock", "IntegerBlock"
    ]  # fmt: skip
