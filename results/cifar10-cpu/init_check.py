"""Spikes per neuron per step in each layer of cifar10-cnn at initialisation, paper (eq. 17) and
scaled Kaiming init, on 256 training images of the CIFAR-10 JPEG proxy (forward only).

    MTSNN_DATA=/path/with/cifar-10-batches-bin python results/cifar10-cpu/init_check.py
"""

import torch

from mtsnn import data
from mtsnn.config import build_model, preset

images = data.load("cifar10", "train").subset(256)
x, _ = next(iter(data.DeviceLoader(images, 256, train=False).epoch(0)))
for init in ("paper", "kaiming"):
    torch.manual_seed(0)
    net = build_model(preset("cifar10-cnn", recipe="fast", init=init)).eval()
    counts = []
    for block in net.blocks():
        block.register_forward_hook(lambda module, inputs, output, counts=counts: counts.append(output.float()))
    with torch.no_grad():
        out = net(x)
    print(
        f"{init}: mean spikes per neuron per step, layer by layer: {[round(c.mean().item(), 2) for c in counts]}; "
        f"output counts at S_max: {(out == 15).float().mean().item():.1%}, at 0: {(out == 0).float().mean().item():.1%}"
    )
