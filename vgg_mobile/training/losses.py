"""The classifiers' losses: the cross-entropy and the focal loss, for the teacher (a Keras
loss object) and the distiller (a per-image function of logits)."""

from __future__ import annotations


def classifier_loss(config):
    """The teacher's loss: the cross-entropy, or the focal loss when `config.focal_gamma` > 0,
    both with `config.label_smoothing` applied to the labels."""
    import tf_keras as keras

    if config.focal_gamma:
        # alpha 1: Keras's alpha is a single weight for every class; weighting by class is
        # `class_weights`' job.
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0, gamma=config.focal_gamma, label_smoothing=config.label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def focal_crossentropy(labels, logits, gamma: float):
    """Per-image focal cross-entropy `-sum_c y_c (1 - p_c)^gamma log p_c`, in float32, from
    logits (the distiller's hard-label term).

    Linear in the label vector, so it takes mixed or all-zero labels (an all-zero vector
    costs 0); for a one-hot label it is Lin et al.'s `-(1 - p_t)^gamma log p_t`, and at
    gamma 0 the plain cross-entropy.

    Args:
        labels: `(n, classes)` label vectors.
        logits: `(n, classes)` logits.
        gamma: The focusing exponent, >= 0.

    Returns:
        A `(n,)` tensor.
    """
    import tensorflow as tf

    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    factor = tf.pow(1.0 - tf.exp(log_p), gamma) if gamma else 1.0
    return -tf.reduce_sum(tf.cast(labels, tf.float32) * factor * log_p, axis=-1)
