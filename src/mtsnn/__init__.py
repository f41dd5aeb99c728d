"""mtsnn: multi-threshold spiking neural networks."""
