"""The int8 table's "without bias correction" column: each shipped model's integer network
built without calibration images, on the whole test set, beside the float network.

    ./run python results/int8/without_correction.py > results/int8/without_correction.txt
"""

import torch

import mtsnn
from mtsnn import data
from mtsnn.integer import IntegerNetwork

DATA = "../shared/datasets"
for name in ("mnist-mlp", "mnist-cnn", "fmnist-mlp", "fmnist-cnn"):
    net = mtsnn.pretrained(name).eval()
    dataset = "mnist" if name.startswith("mnist") else "fashion-mnist"
    test = data.load(dataset, "test", DATA)
    integer = IntegerNetwork(net, *data.NORMALISATION[dataset])  # no calibration images
    with torch.no_grad():
        floats = torch.cat([net(x).sum(0).argmax(1) for x, _ in data.DeviceLoader(test, 1000, train=False).epoch(0)])
    ints = torch.cat([integer(test.images[i : i + 1000]).sum(0).argmax(1) for i in range(0, len(test), 1000)])
    float_acc, int_acc = ((p == test.labels).float().mean().item() * 100 for p in (floats, ints))
    agreement = (ints == floats).float().mean().item() * 100
    print(
        f"{name}: float {float_acc:.2f}%, int8 without bias correction {int_acc:.2f}% "
        f"({int_acc - float_acc:+.2f}), same prediction {agreement:.2f}%",
        flush=True,
    )
