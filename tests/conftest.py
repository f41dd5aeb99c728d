"""Tests run the neuron eagerly (no compile time per shape); test_fused.py checks the fused path."""

import os

os.environ.setdefault("MTSNN_NEURON_BACKEND", "eager")
