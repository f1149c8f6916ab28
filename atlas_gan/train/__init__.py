"""Training: the torchrun entry point, the loop, distributed helpers, checkpoints and the data stream."""
