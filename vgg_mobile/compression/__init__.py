"""Pruning and quantization-aware training with tfmot, each a stage that writes a new run."""
