"""Agreement of int8 with float on training images 10000-19999 (issue 18): max-abs scales against
per-channel scales chosen to minimise the rounding error (squared, over the channel's weights)."""

import dataclasses
import sys

import torch

import mtsnn
from mtsnn import data
from mtsnn import integer as I


def quantize_mse(weight, v_th):
    dims = tuple(range(1, weight.dim()))
    view = (-1,) + (1,) * (weight.dim() - 1)
    top = weight.abs().amax(dims).clamp_min(1e-30)
    best, best_err = None, None
    for f in [1.0 - 0.02 * i for i in range(16)]:
        s = top * f / I.WEIGHT_MAX
        q = torch.round(weight / s.view(view)).clamp(-I.WEIGHT_MAX, I.WEIGHT_MAX)
        err = ((q * s.view(view) - weight) ** 2).sum(dims)
        if best is None:
            best, best_err = s.clone(), err
        else:
            better = err < best_err
            best[better], best_err = s[better], torch.minimum(err, best_err)
    q = torch.round(weight / best.view(view)).clamp_(-I.WEIGHT_MAX, I.WEIGHT_MAX).to(torch.int8)
    return q, best, torch.round(v_th / best).long()


model, name = sys.argv[1], sys.argv[2]
net = mtsnn.pretrained(model).eval()
train = data.load(name, "train", "../shared/datasets")
mean, std = data.NORMALISATION[name]
part = dataclasses.replace(train, images=train.images[10000:20000], labels=train.labels[10000:20000])
pix = part.images
with torch.no_grad():
    ref = torch.cat([net(x).sum(0).argmax(1) for x, _ in data.DeviceLoader(part, 1000, train=False).epoch(0)])
orig = I._quantize
for label, q in (("max-abs", orig), ("mse", quantize_mse)):
    I._quantize = q
    integer = I.IntegerNetwork(net, mean, std, calibration=train.images[:1000])
    pred = torch.cat([integer(pix[i : i + 1000]).sum(0).argmax(1) for i in range(0, len(pix), 1000)])
    agreement = (pred == ref).float().mean() * 100
    labels = part.labels
    accuracy, float_accuracy = ((p == labels).float().mean() * 100 for p in (pred, ref))
    print(f"{model} {label}: agreement {agreement:.2f}% accuracy {accuracy:.2f}% (float {float_accuracy:.2f}%)")
