"""Metrics of a model on held-out images, and their plots."""
