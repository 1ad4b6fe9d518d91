"""The teacher's loss (cross-entropy or focal, with label smoothing) and the distiller's focal
term, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

import vgg_mobile  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vgg_mobile.training.hyperparameters import TrainConfig
from vgg_mobile.training.losses import classifier_loss, focal_crossentropy

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]], np.float32)
LABELS = np.eye(3, dtype=np.float32)[[0, 0, 1]]


def _focal(labels, probs, gamma, smoothing=0.0):
    labels = labels * (1 - smoothing) + smoothing / labels.shape[1]
    return np.mean(np.sum(-labels * (1 - probs) ** gamma * np.log(probs), axis=1))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_teacher_s_focal_loss_is_lin_et_al_s_with_label_smoothing(smoothing):
    focal = classifier_loss(TrainConfig(focal_gamma=2.0, label_smoothing=smoothing))
    got = float(focal(LABELS, PROBS))
    # By hand, for the first image without smoothing: -(1 - 0.7)^2 log 0.7.
    assert _focal(LABELS[:1], PROBS[:1], 2.0) == pytest.approx(-(0.3 ** 2) * np.log(0.7))
    assert got == pytest.approx(_focal(LABELS, PROBS, 2.0, smoothing), rel=1e-5)
    plain = classifier_loss(TrainConfig(focal_gamma=0.0, label_smoothing=smoothing))
    assert got < float(plain(LABELS, PROBS))  # the confident right answer weighs less


def test_at_gamma_0_the_loss_is_the_cross_entropy():
    import tf_keras as keras

    loss = classifier_loss(TrainConfig(focal_gamma=0.0, label_smoothing=0.1))
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    assert float(loss(LABELS, PROBS)) == pytest.approx(float(reference(LABELS, PROBS)), rel=1e-6)
    assert float(loss(LABELS, PROBS)) == pytest.approx(_focal(LABELS, PROBS, 0.0, 0.1), rel=1e-5)


def test_the_distiller_s_focal_term_from_logits():
    logits = np.log(PROBS) + 3.0  # softmax gives PROBS back
    got = focal_crossentropy(LABELS, logits, 2.0).numpy()
    expected = np.sum(-LABELS * (1 - PROBS) ** 2 * np.log(PROBS), axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(focal_crossentropy(LABELS, logits, 0.0).numpy(),
                               -np.sum(LABELS * np.log(PROBS), axis=1), rtol=1e-5)
    # An unlabelled image's all-zero vector costs nothing.
    assert focal_crossentropy(np.zeros((1, 3), np.float32), logits[:1], 2.0).numpy()[0] == 0.0
