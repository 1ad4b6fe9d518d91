"""The Distiller: Hinton's loss with T^2 scaling, only the student trains, it returns the student's output."""

from __future__ import annotations

import numpy as np
import pytest

from vgg_mobile.core.errors import BadInputError
from vgg_mobile.data import dataset
from vgg_mobile.distillation.distiller import build_distiller
from vgg_mobile.models.architectures import ModelOptions, build_classifier

STUDENT = "mobilenet_v2_0.35"
STUDENT_SIZE = 64  # differs from the teacher's 32 px, so both views of "consistent teaching" run


@pytest.fixture(scope="module")
def teacher_model(teacher_run):
    from vgg_mobile.core.run_dir import load_run

    return load_run(teacher_run.run_dir).load_model()


def test_distillation_loss_is_hinton_kl_scaled_by_t_squared(teacher_run, teacher_model, sample_dir):
    import tf_keras as keras

    folder = dataset.scan_folder(sample_dir)
    x, _ = next(iter(dataset.make_dataset(folder.train[::10], 32, 16, 4)))
    teacher_logits = keras.Model(teacher_model.input, teacher_model.get_layer("logits").output)(x).numpy()
    assert np.ptp(teacher_logits, axis=0).max() > 1e-2  # the trained teacher's logits vary
    student = build_classifier(ModelOptions(architecture=STUDENT, image_size=32, head_units=0), 4)
    distiller = build_distiller(student, teacher_model, temperature=3.0, alpha=0.2)
    student_logits = teacher_logits[::-1] * 0.5

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    p_log, q_log = log_softmax(teacher_logits / 3.0), log_softmax(student_logits / 3.0)
    expected = 9.0 * np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=1))
    got = float(distiller.distillation_loss(teacher_logits, student_logits))
    assert expected > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(distiller.distillation_loss(teacher_logits, teacher_logits)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_distiller_trains_only_the_student_and_returns_its_output(teacher_model, sample_dir):
    import tf_keras as keras

    folder = dataset.scan_folder(sample_dir)
    parts = dataset.split(folder)
    keras.utils.set_random_seed(0)
    student = build_classifier(
        ModelOptions(architecture=STUDENT, image_size=STUDENT_SIZE, head_units=0, dropout=0.0), 4)
    distiller = build_distiller(student, teacher_model, temperature=2.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    teacher_before = [w.copy() for w in teacher_model.get_weights()]
    student_before = {w.name: w.numpy().copy() for w in student.weights}
    ds = dataset.make_multi_view_dataset(parts.train, (STUDENT_SIZE, 32), 16, 4, training=True,
                                         augmentation=dataset.Augmentation(), seed=0)
    history = distiller.fit(ds, epochs=2, verbose=0).history

    assert {"student_loss", "distillation_loss", "total_loss", "accuracy"} <= set(history)
    # Epoch means of a linear combination: total = alpha * student + (1 - alpha) * distillation.
    np.testing.assert_allclose(
        history["total_loss"],
        0.5 * np.array(history["student_loss"]) + 0.5 * np.array(history["distillation_loss"]),
        rtol=1e-4)
    assert all(v > 0 for v in history["distillation_loss"])
    for before, after in zip(teacher_before, teacher_model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert not teacher_model.trainable
    changed = {w.name for w in student.weights
               if not np.array_equal(student_before[w.name], w.numpy())}
    trainable = {w.name for w in student.trainable_weights}
    assert trainable <= changed  # every trainable student weight moved
    assert any("moving_mean" in name for name in changed)  # and BatchNorm statistics followed
    assert {w.ref() for w in distiller.trainable_weights} == {w.ref() for w in student.trainable_weights}

    x = next(iter(dataset.make_dataset(parts.val, STUDENT_SIZE, 16, 4)))[0]
    # After two epochs the moving statistics are still young and inference outputs nearly
    # constant; with batch statistics (and no dropout) the outputs vary, so compare there too.
    for training in (True, False):
        expected = student(x, training=training).numpy()
        np.testing.assert_allclose(distiller(x, training=training).numpy(), expected,
                                   rtol=1e-5, atol=1e-6)
    assert np.ptp(student(x, training=True).numpy(), axis=0).max() > 1e-3


def test_mixup_mixes_both_views_and_the_labels_with_one_weight_and_one_order(teacher_model):
    import tensorflow as tf

    student = build_classifier(ModelOptions(architecture=STUDENT, image_size=32, head_units=0), 4)
    distiller = build_distiller(student, teacher_model, mixup=0.4)
    rng = np.random.default_rng(0)
    student_x = tf.constant(rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32))
    teacher_x = student_x * 0.5 + 7.0  # another view, tied to the first
    y = tf.one_hot(np.arange(8) % 4, 4)
    tf.random.set_seed(1)
    mixed_s, mixed_t, mixed_y, mixed_l = (t.numpy() for t in distiller._mix(
        student_x, teacher_x, y, tf.ones([8])))
    # The same mix of the same images: the tie between the views survives mixing.
    np.testing.assert_allclose(mixed_t, mixed_s * 0.5 + 7.0, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mixed_l, 1.0, rtol=1e-6)
    # Unlabelled images (zero label vectors): each mixed label vector sums to the labelled share
    # of its mix, the `labelled` weight it is mixed with.
    labelled = tf.constant([1.0, 0.0] * 4)
    tf.random.set_seed(1)
    _, _, mixed_y, mixed_l = (t.numpy() for t in distiller._mix(
        student_x, teacher_x, y * labelled[:, None], labelled))
    np.testing.assert_allclose(mixed_y.sum(axis=1), mixed_l, rtol=1e-5, atol=1e-6)
    assert ((mixed_l > 1e-6) & (mixed_l < 1 - 1e-6)).any()  # labelled and unlabelled mixed
    assert not np.allclose(mixed_s, student_x.numpy())  # something was mixed
    assert not np.allclose(mixed_y, y.numpy()) or np.allclose(mixed_s, student_x.numpy())
    with pytest.raises(BadInputError, match="mixup must be >= 0"):
        build_distiller(student, teacher_model, mixup=-1)


def test_unlabelled_images_train_through_the_distillation_term_alone():
    """Cross-entropy over the labelled images of the batch, distillation over all of them;
    an unlabelled image's label vector is ignored."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    options = ModelOptions(architecture=STUDENT, image_size=32, head_units=0, dropout=0.0)
    student, teacher = build_classifier(options, 3), build_classifier(options, 3)
    distiller = build_distiller(student, teacher, temperature=2.0, alpha=0.3)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))  # measure the losses, move nothing
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (6, 32, 32, 3)).astype(np.float32))
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    labelled = np.array([1, 1, 0, 0, 1, 0], np.float32)
    junk = labels.copy()
    junk[labelled == 0] = rng.uniform(0, 5, (3, 3))  # whatever an unlabelled vector holds

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    student_logits = distiller.student_logits(x, training=True).numpy()
    teacher_logits = distiller.teacher_logits(x, training=False).numpy()
    cross_entropy = -(labels * log_softmax(student_logits)).sum(axis=1)[labelled == 1].mean()
    p_log, q_log = log_softmax(teacher_logits / 2.0), log_softmax(student_logits / 2.0)
    kd = 4.0 * np.mean(np.sum(np.exp(p_log) * (p_log - q_log), axis=1))
    logs = distiller.train_step((x, tf.constant(junk), tf.constant(labelled)))
    np.testing.assert_allclose(float(logs["student_loss"]), cross_entropy, rtol=1e-4)
    np.testing.assert_allclose(float(logs["distillation_loss"]), kd, rtol=1e-4)
    np.testing.assert_allclose(float(logs["total_loss"]), 0.3 * cross_entropy + 0.7 * kd, rtol=1e-4)
    accuracy = (student_logits.argmax(axis=1) == labels.argmax(axis=1))[labelled == 1].mean()
    np.testing.assert_allclose(float(logs["accuracy"]), accuracy, rtol=1e-6)

    # A batch of unlabelled images alone: no cross-entropy, the distillation term is the loss.
    distiller.reset_metrics()
    logs = distiller.train_step((x, tf.constant(junk), tf.zeros([6])))
    assert float(logs["distillation_loss"]) == pytest.approx(kd, rel=1e-4)
    assert float(logs["total_loss"]) == pytest.approx(0.7 * kd, rel=1e-4)


def test_the_label_term_pushes_nothing_on_an_unlabelled_image():
    """The gradient of the label term, not only its value, is zero on an all-zero label
    vector. Keras's cross-entropy from logits costs 0 there but its gradient is the softmax
    (`softmax - y`, for labels summing to 1): every unlabelled image was pushed away from the
    student's own answer, and distillation with unlabelled images diverged."""
    import tensorflow as tf
    import tf_keras as keras

    options = ModelOptions(architecture=STUDENT, image_size=32, head_units=0, dropout=0.0)
    keras.utils.set_random_seed(0)
    distiller = build_distiller(build_classifier(options, 3), build_classifier(options, 3),
                                temperature=2.0, alpha=0.3)
    logits = tf.Variable([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [1.0, -2.0, 3.0], [0.0, 0.0, 4.0]])
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    labelled = np.array([1, 0, 1, 0], np.float32)
    with tf.GradientTape() as tape:
        loss = distiller.student_loss(tf.constant(labels * labelled[:, None]), logits,
                                      tf.constant(labelled))
    gradient = tape.gradient(loss, logits).numpy()
    softmax = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(gradient[labelled == 0], 0.0, atol=1e-7)
    np.testing.assert_allclose(gradient[labelled == 1], (softmax - labels)[labelled == 1] / 2,
                               rtol=1e-5)


def test_class_weights_and_focal_gamma_weigh_the_hard_label_term_alone():
    """Each labelled image's cross-entropy times its class's weight (focal with gamma), summed
    over the labelled share of the batch; the distillation term stays unweighted."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    options = ModelOptions(architecture=STUDENT, image_size=32, head_units=0, dropout=0.0)
    student, teacher = build_classifier(options, 3), build_classifier(options, 3)
    weights = (0.5, 1.0, 4.0)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (6, 32, 32, 3)).astype(np.float32))
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    labelled = np.array([1, 1, 0, 1, 1, 1], np.float32)  # one unlabelled image

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def logs_of(**kwargs):
        distiller = build_distiller(student, teacher, temperature=2.0, alpha=0.3, **kwargs)
        distiller.compile(optimizer=keras.optimizers.SGD(0.0))  # measure, move nothing
        student_logits = distiller.student_logits(x, training=True).numpy()
        return distiller.train_step((x, tf.constant(labels), tf.constant(labelled))), student_logits

    plain, student_logits = logs_of()
    weighted, _ = logs_of(class_weights=weights)
    focal, _ = logs_of(class_weights=weights, focal_gamma=2.0)
    log_p = log_softmax(student_logits)
    per_image = -(labels * log_p).sum(axis=1)
    image_weight = labels @ np.array(weights, np.float32)
    expected = (per_image * image_weight * labelled).sum() / labelled.sum()
    np.testing.assert_allclose(float(weighted["student_loss"]), expected, rtol=1e-4)
    assert abs(float(weighted["student_loss"]) - float(plain["student_loss"])) > 1e-3
    focal_per_image = -(labels * (1 - np.exp(log_p)) ** 2 * log_p).sum(axis=1)
    expected_focal = (focal_per_image * image_weight * labelled).sum() / labelled.sum()
    np.testing.assert_allclose(float(focal["student_loss"]), expected_focal, rtol=1e-4)
    # The distillation term is the same whatever weighs the labels.
    for logs in (weighted, focal):
        np.testing.assert_allclose(float(logs["distillation_loss"]),
                                   float(plain["distillation_loss"]), rtol=1e-5)
        np.testing.assert_allclose(float(logs["total_loss"]), 0.3 * float(logs["student_loss"])
                                   + 0.7 * float(logs["distillation_loss"]), rtol=1e-4)


def test_bad_class_weights_and_focal_gamma_are_refused():
    options = ModelOptions(architecture=STUDENT, image_size=32, head_units=0)
    student = build_classifier(options, 3)
    with pytest.raises(BadInputError, match="focal_gamma=-1"):
        build_distiller(student, None, alpha=1.0, focal_gamma=-1)
    with pytest.raises(BadInputError, match="one weight per class"):
        build_distiller(student, None, alpha=1.0, class_weights=(1.0, 2.0))
    with pytest.raises(BadInputError, match="class_weights"):
        build_distiller(student, None, alpha=1.0, class_weights=(1.0, -2.0, 1.0))


def test_a_class_weighted_focal_distiller_fits_with_mixup_and_unlabelled_images():
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    options = ModelOptions(architecture=STUDENT, image_size=32, head_units=0, dropout=0.0)
    student, teacher = build_classifier(options, 3), build_classifier(options, 3)
    distiller = build_distiller(student, teacher, alpha=0.5, mixup=0.4,
                                class_weights=(0.5, 1.0, 4.0), focal_gamma=2.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (12, 32, 32, 3)).astype(np.float32)
    labelled = np.array([1, 0] * 6, np.float32)
    y = np.eye(3, dtype=np.float32)[np.arange(12) % 3] * labelled[:, None]
    before = [w.copy() for w in student.get_weights()]
    history = distiller.fit(tf.data.Dataset.from_tensor_slices((x, y, labelled)).batch(4),
                            epochs=1, verbose=0).history
    assert all(np.isfinite(history[key][0]) for key in ("student_loss", "total_loss"))
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))


def _flat_model(seed: int, size: int = 8, classes: int = 3):
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    logits = keras.layers.Dense(classes, name="logits")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def test_teacher_tta_averages_the_softened_answers_on_the_image_and_its_mirror():
    import tf_keras as keras

    teacher, student = _flat_model(0), _flat_model(1)
    x = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 3)).astype(np.float32)
    logits = keras.Model(teacher.input, teacher.get_layer("logits").output)
    t = 2.0

    def soft(z):
        z = np.asarray(z, dtype=np.float64) / t
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    plain, mirrored = soft(logits(x)), soft(logits(x[:, :, ::-1]))
    assert np.abs(plain - mirrored).max() > 1e-2  # a teacher that tells the mirror apart
    averaged = build_distiller(student, teacher, temperature=t, teacher_tta=True)
    np.testing.assert_allclose(soft(averaged.teacher_answers(x)), (plain + mirrored) / 2,
                               atol=1e-5)
    single = build_distiller(student, teacher, temperature=t)
    np.testing.assert_allclose(soft(single.teacher_answers(x)), plain, atol=1e-5)
    # And it trains in a compiled step.
    averaged.compile(optimizer=keras.optimizers.SGD(0.1))
    history = averaged.fit(x, np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]], batch_size=4,
                           epochs=1, verbose=0)
    assert np.isfinite(history.history["distillation_loss"][0])
