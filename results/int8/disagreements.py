"""Where int8 and float disagree (issue 18), on training images 10000-12999: ties, margins,
and the agreement when one block's weights alone are rounded to int8. ARGS: MODEL DATASET."""

import copy
import sys

import torch

import mtsnn
from mtsnn import data
from mtsnn.integer import WEIGHT_MAX, IntegerBlock, IntegerNetwork
from mtsnn.layers import SpikingBlock

torch.manual_seed(0)
net = mtsnn.pretrained(sys.argv[1]).eval()
name = sys.argv[2]
train = data.load(name, "train", "../shared/datasets")
mean, std = data.NORMALISATION[name]
pix = train.images[10000:13000]


def norm(p):
    x = p.float() / 255.0
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def counts(model):
    with torch.no_grad():
        return torch.cat([model(norm(pix[i : i + 500])).sum(0) for i in range(0, 3000, 500)], 0)


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
        w = b.weight
        dims = tuple(range(1, w.dim()))
        sc = w.abs().amax(dims, keepdim=True) / WEIGHT_MAX
        w.copy_(torch.round(w / sc) * sc)
    c = counts(model)
    print(f"block {k} weights quantized alone: agreement {(top(c) == top(fc)).float().mean() * 100:.2f}%")
