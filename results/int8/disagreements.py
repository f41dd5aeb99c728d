"""Where int8 and float disagree (issue 18), on training images 10000-12999: ties, margins,
and the agreement when one block's weights alone are rounded to int8. ARGS: MODEL DATASET."""

import copy
import dataclasses
import sys

import torch

import mtsnn
from mtsnn import data
from mtsnn.integer import IntegerBlock, IntegerNetwork, _quantize
from mtsnn.layers import SpikingBlock

torch.manual_seed(0)
net = mtsnn.pretrained(sys.argv[1]).eval()
name = sys.argv[2]
train = data.load(name, "train", "../shared/datasets")
mean, std = data.NORMALISATION[name]
part = dataclasses.replace(train, images=train.images[10000:13000], labels=train.labels[10000:13000])
pix = part.images


def counts(model):
    with torch.no_grad():
        return torch.cat([model(x).sum(0) for x, _ in data.DeviceLoader(part, 500, train=False).epoch(0)], 0)


def top(c):
    return c.argmax(1)


def ties(c):
    s = c.sort(1, descending=True).values
    return (s[:, 0] == s[:, 1]).float().mean().item() * 100


fc = counts(net)
print(f"float: ties {ties(fc):.2f}%, mean top count {fc.max(1).values.mean():.2f}")
integer = IntegerNetwork(net, mean, std, calibration=train.images[:1000])
ic = torch.cat([integer(pix[i : i + 500]).sum(0) for i in range(0, 3000, 500)]).float()
print(f"int8: ties {ties(ic):.2f}%, agreement {(top(ic) == top(fc)).float().mean() * 100:.2f}%")
for layer in integer.layers:
    if isinstance(layer, IntegerBlock):
        print("  theta", layer.theta.min().item(), layer.theta.float().median().item(), layer.theta.max().item())
dis = top(ic) != top(fc)
s = fc.sort(1, descending=True).values
print("float margin (top1-top2) at disagreements:", (s[dis, 0] - s[dis, 1]).tolist()[:40])
blocks = [m for m in net.modules() if isinstance(m, SpikingBlock)]
for k in range(len(blocks)):
    model = copy.deepcopy(net)
    b = [m for m in model.modules() if isinstance(m, SpikingBlock)][k]
    with torch.no_grad():
        q, scale, _ = _quantize(b.weight.double(), b.params.v_th)  # the integer path's rounding
        b.weight.copy_(q.double() * scale.view((-1,) + (1,) * (q.dim() - 1)))
    c = counts(model)
    print(f"block {k} weights quantized alone: agreement {(top(c) == top(fc)).float().mean() * 100:.2f}%")
