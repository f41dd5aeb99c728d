"""The int8 table's "without bias correction" column: each shipped model's integer network
built without calibration images, on the whole test set, beside the float network.

    ./run python results/int8/without_correction.py > results/int8/without_correction.txt
"""

from mtsnn import data, zoo
from mtsnn.experiments.evaluate import integer_accuracy
from mtsnn.experiments.objective import evaluate

for name in ("mnist-mlp", "mnist-cnn", "fmnist-mlp", "fmnist-cnn"):
    net, cfg = zoo.load(name)
    test = data.load(cfg.dataset, "test", "../shared/datasets")
    loader = data.DeviceLoader(test, 1000, train=False)
    float_acc = evaluate(net, loader, cfg)["acc"]
    int_acc, agreement = integer_accuracy(net, loader, test, calibration=None)
    print(
        f"{name}: float {float_acc:.2f}%, int8 without bias correction {int_acc:.2f}% "
        f"({int_acc - float_acc:+.2f}), same prediction {agreement:.2f}%",
        flush=True,
    )
