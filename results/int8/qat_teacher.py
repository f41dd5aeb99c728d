"""fmnist-cnn's fine-tuning for integer inference with and without a teacher (issue 18): how
often each run's integer network (calibrated on the first 1,000 training images, as
`mtsnn eval --int8` does) predicts what its float network predicts, on training images
10,000-19,999, and its float accuracy there. The rule, written before the taught run trained:
the taught run (fmnist-cnn-qat-taught) replaces models/fmnist-cnn-qat (fine-tuned without a
teacher) if it agrees at least as often; the test set plays no part in the choice.

    ./run python results/int8/qat_teacher.py > results/int8/qat_teacher.txt
"""

import dataclasses

from mtsnn import data
from mtsnn.experiments.evaluate import INT8_CALIBRATION_IMAGES, integer_accuracy, load_trained
from mtsnn.experiments.objective import evaluate

train = data.load("fashion-mnist", "train", "../shared/datasets")
part = dataclasses.replace(train, images=train.images[10000:20000], labels=train.labels[10000:20000])
loader = data.DeviceLoader(part, 1000, train=False)
print("| run | float % | int8 % | same prediction % |")
print("|---|---|---|---|")
for run in ("results/int8/runs/fmnist-cnn-qat/seed0", "results/int8/runs/fmnist-cnn-qat-taught/seed0"):
    net, cfg = load_trained(run)
    float_acc = evaluate(net.eval(), loader, cfg)["acc"]
    int8_acc, agreement = integer_accuracy(net, loader, part, train.images[:INT8_CALIBRATION_IMAGES])
    print(f"| {run} | {float_acc:.2f} | {int8_acc:.2f} | {agreement:.2f} |", flush=True)
