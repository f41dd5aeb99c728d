"""mtsnn: ultra-low-latency spiking neural networks with multi-threshold LIF neurons.

The method is that of "Direct training via backpropagation for ultra-low-latency
spiking neural networks with multi-threshold" (Xu et al., Symmetry 2022).
"""

from . import data, layers, models, neuron, surrogate
from .layers import SpikingBlock, SpikingConv2d, SpikingLinear
from .models import from_spec
from .neuron import GRAD_MODES, LIFParams, MultiThresholdLIF, lif_step
from .zoo import pretrained

__all__ = [
    "GRAD_MODES",
    "LIFParams",
    "MultiThresholdLIF",
    "SpikingBlock",
    "SpikingConv2d",
    "SpikingLinear",
    "data",
    "from_spec",
    "layers",
    "lif_step",
    "models",
    "neuron",
    "pretrained",
    "surrogate",
]
__version__ = "0.1.0"
