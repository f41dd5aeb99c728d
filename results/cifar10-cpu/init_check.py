"""Spikes per neuron per step in each layer of cifar10-cnn at initialisation, on 256 training
images of the CIFAR-10 JPEG proxy (forward only): the paper's eq. (17), scaled Kaiming, and
eq. (17) then calibrated (mtsnn.models.calibrate, --calibrate STD) on the first 128 of them.

    MTSNN_DATA=/path/with/cifar-10-batches-bin python results/cifar10-cpu/init_check.py
"""

import torch

from mtsnn import data
from mtsnn.config import build_model, preset
from mtsnn.models import calibrate

images = data.load("cifar10", "train").subset(256)
x, _ = next(iter(data.DeviceLoader(images, 256, train=False).epoch(0)))
for init, spread in (("paper", 0.0), ("kaiming", 0.0), ("paper", 0.5), ("paper", 1.0), ("paper", 2.0)):
    torch.manual_seed(0)
    net = build_model(preset("cifar10-cnn", recipe="fast", init=init)).eval()
    if spread:
        calibrate(net, x[:128], spread)
    counts = []
    for block in net.blocks():
        block.register_forward_hook(lambda module, inputs, output, counts=counts: counts.append(output.float()))
    with torch.no_grad():
        out = net(x)
    name = f"{init} init" + (f", calibrated to {spread} V_th" if spread else "")
    at_max, at_zero = (out == 15).float().mean().item(), (out == 0).float().mean().item()
    print(
        f"{name}: mean spikes per neuron per step, layer by layer: {[round(c.mean().item(), 2) for c in counts]}; "
        f"output counts at S_max: {at_max:.1%}, at 0: {at_zero:.1%}",
        flush=True,
    )
