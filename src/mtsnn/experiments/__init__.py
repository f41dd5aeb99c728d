"""The experiment machinery around the library: training runs and their run directories,
evaluation, the report, the paper's figures, sweeps and the command line. Nothing in
:mod:`mtsnn`'s library modules imports it."""
