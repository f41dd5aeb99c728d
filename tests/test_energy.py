"""Operation and energy counts on tiny networks, against counts worked out by hand."""

import pytest
import torch

import mtsnn
from mtsnn.energy import count_operations
from mtsnn.integer import round_weights


def set_weights(block, weight):
    with torch.no_grad():
        block.weight.copy_(torch.as_tensor(weight, dtype=block.weight.dtype).reshape(block.weight.shape))
        block.bias.zero_()


def test_mlp_counts_by_hand():
    net = mtsnn.from_spec("4-3-2", (4,), 2, num_steps=2).double()
    first, out = net.blocks()
    set_weights(first, [[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 0, 0]])
    set_weights(out, [[10, 0, 0], [0, 0, 0]])
    # currents 15, 25, 0 per step; beta 0.9: v=15 -> 1 (u=5), 19.5 -> 1; v=25 -> 2 (u=5), 29.5 -> 2
    # output: 10 per step from one spike of hidden neuron 1 -> 1, 1
    report = count_operations(net, torch.tensor([[1.5, 2.5, 0.0, 0.0]], dtype=torch.float64))
    hidden, output = report["layers"]
    assert hidden["dense_macs"] == 12 and hidden["ann_macs"] == 12 and hidden["acs"] == 0
    assert hidden["spikes_per_neuron"] == pytest.approx(2.0) and hidden["firing_rate"] == pytest.approx(1.0)
    # hidden spikes per step [1, 2, 0]: ACs (1+2) x 2 outputs x 2 steps = 12; MACs 2 non-zero x 2 x 2 = 8
    assert output["acs"] == 12 and output["event_macs"] == 8 and output["ann_macs"] == 6
    assert output["spikes_per_neuron"] == pytest.approx(1.0)
    total = report["total"]
    assert total["neuron_updates"] == 10 and total["ann_macs"] == 18
    energy = report["energy_pj"]
    assert energy["snn_accumulate_hardware"] == pytest.approx(12 * 4.6 + 12 * 0.9)
    assert energy["snn_mac_hardware"] == pytest.approx(20 * 4.6)
    assert energy["ann_twin"] == pytest.approx(18 * 4.6)
    assert report["energy_ratio_to_ann"]["snn_accumulate_hardware"] == pytest.approx(66.0 / 82.8)


def test_cnn_counts_with_border_taps_and_average_pooling():
    net = mtsnn.from_spec("2C3-P2", (1, 4, 4), 2, num_steps=2).double()  # + output layer of 2
    conv, out = net.blocks()
    centre_only = torch.zeros(2, 1, 3, 3)
    centre_only[0, 0, 1, 1] = 10
    set_weights(conv, centre_only)
    set_weights(out, torch.zeros(2, 8))
    report = count_operations(net, torch.full((3, 1, 4, 4), 1.5, dtype=torch.float64))
    c, d = report["layers"]
    # 'same' 3x3 on 4x4: 4 corners x 4 taps + 8 edges x 6 + 4 inside x 9 = 100 per channel pair, x 2 out
    assert c["dense_macs"] == 200 and c["ann_macs"] == 200
    # channel 0 fires once per step everywhere (v=15, then 19.5), channel 1 never: 32 spikes / 32 neurons
    assert c["spikes_per_neuron"] == pytest.approx(1.0) and c["neurons"] == 32
    # pooled channel 0 holds 4 spikes per 2x2 window per step: 4 windows x 4 x 2 outputs x 2 steps
    assert d["acs"] == 64 and d["event_macs"] == 16 and d["ann_macs"] == 16
    assert report["total"]["neuron_updates"] == (32 + 2) * 2


def test_silent_network_costs_only_its_first_layer():
    net = mtsnn.from_spec("4-3-2", (4,), 2, num_steps=3)
    report = count_operations(net, torch.zeros(5, 4))
    assert report["total"]["acs"] == 0 and report["total"]["event_macs"] == 0
    assert report["energy_pj"]["snn_accumulate_hardware"] == pytest.approx(12 * 4.6)


def test_ann_twin_operations_count_every_synapse():
    from mtsnn.energy import ann_operations

    report = ann_operations("784-400-400-10", (1, 28, 28))
    assert [r["ann_macs"] for r in report["layers"]] == [784 * 400, 400 * 400, 400 * 10]
    assert report["energy_pj"]["ann_twin"] == pytest.approx((784 * 400 + 400 * 400 + 4000) * 4.6)
    conv = ann_operations("2C3-P2", (1, 4, 4), 2)  # 100 valid taps x 2 channels, then 8 -> 2
    assert [r["ann_macs"] for r in conv["layers"]] == [200, 16]


def test_a_network_read_through_rounded_weights_names_its_layers_as_built():
    net = round_weights(mtsnn.from_spec("2C3-P2-4", (1, 4, 4), 2))  # as --qat trains it
    layers = count_operations(net, torch.rand(3, 1, 4, 4) * 20)["layers"]
    assert [row["layer"] for row in layers] == ["SpikingConv2d", "SpikingLinear", "SpikingLinear"]
