"""How many calibration images the bias correction needs (issue 18): the 150-epoch fmnist-mlp's
integer network, built without calibration and with the first 1,000 or 5,000 training images,
against the float network on training images 30,000-59,999, which none of them calibrate on.

    ./run python results/int8/calibration.py > results/int8/calibration.txt
"""

import dataclasses

import torch

import mtsnn
from mtsnn import data
from mtsnn.integer import IntegerNetwork

train = data.load("fashion-mnist", "train", "../shared/datasets")
held = dataclasses.replace(train, images=train.images[30000:], labels=train.labels[30000:])
net = mtsnn.pretrained("fmnist-mlp").eval()
with torch.no_grad():
    floats = torch.cat([net(x).sum(0).argmax(1) for x, _ in data.DeviceLoader(held, 1000, train=False).epoch(0)])
for count in (0, 1000, 5000):
    calibration = train.images[:count] if count else None
    integer = IntegerNetwork(net, *data.NORMALISATION["fashion-mnist"], calibration=calibration)
    ints = torch.cat([integer(held.images[i : i + 1000]).sum(0).argmax(1) for i in range(0, len(held), 1000)])
    print(f"calibration images {count}: same prediction {(ints == floats).float().mean().item() * 100:.2f}%")
