"""How many calibration images the bias correction needs (issue 18): the 150-epoch fmnist-mlp's
integer network, built without calibration and with the first 1,000 or 5,000 training images,
against the float network on training images 30,000-59,999, which none of them calibrate on.

    ./run python results/int8/calibration.py > results/int8/calibration.txt
"""

import dataclasses

import mtsnn
from mtsnn import data
from mtsnn.experiments.evaluate import integer_accuracy

train = data.load("fashion-mnist", "train", "../shared/datasets")
held = dataclasses.replace(train, images=train.images[30000:], labels=train.labels[30000:])
loader = data.DeviceLoader(held, 1000, train=False)
net = mtsnn.pretrained("fmnist-mlp").eval()
for count in (0, 1000, 5000):
    _, agreement = integer_accuracy(net, loader, held, train.images[:count] if count else None)
    print(f"calibration images {count}: same prediction {agreement:.2f}%")
