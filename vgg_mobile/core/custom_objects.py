"""Models with tfmot layers: how to tell one, and how to load one.

Part of the run-directory contract rather than of compression: every stage that loads a
run (evaluation, conversion, distillation from a compressed teacher) must be able to load a
quantization-aware model, and must never need to import the compression stage to do so.
"""

from __future__ import annotations

import contextlib

# The tfmot layer classes a quantization-aware (or annotated) model is built from.
QUANTIZE_LAYERS = ("QuantizeLayer", "QuantizeWrapper", "QuantizeWrapperV2", "QuantizeAnnotate")


def is_quantization_aware(model) -> bool:
    """Whether `model` holds tfmot quantization layers (fake-quantization in float)."""
    return any(type(layer).__name__ in QUANTIZE_LAYERS for layer in model.layers)


def load_scope(manifest):
    """The Keras custom-object scope that a run's model file needs to load.

    Args:
        manifest: The run's `Manifest`; `quantization_aware` marks a QAT model.

    Returns:
        tfmot's `quantize_scope()` for quantization-aware models, else a no-op context.
    """
    if manifest.quantization_aware:
        # Only tfmot's own scope can rebuild its layers; the import is here, not at the top,
        # so that loading a float run never imports tfmot.
        import tensorflow_model_optimization as tfmot

        return tfmot.quantization.keras.quantize_scope()
    return contextlib.nullcontext()


def scope_class_names(manifest) -> frozenset[str]:
    """The class names that `load_scope(manifest)` lets Keras build beyond its own.

    Args:
        manifest: The run's manifest, as for `load_scope`.

    Returns:
        tfmot's quantization classes for a quantization-aware model, else none.
    """
    scope = load_scope(manifest)
    return frozenset(name for objects in getattr(scope, "custom_objects", ()) for name in objects)
