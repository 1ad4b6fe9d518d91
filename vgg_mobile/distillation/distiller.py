"""The `Distiller`: a frozen teacher teaches a student with Hinton's loss.

    alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

Both models are read at their `logits` layers. `call()` returns the student's output, and
the losses are reported apart (`student_loss`, `distillation_loss`, `total_loss`).

Unlabelled images train through the distillation term alone. A batch may carry a per-image
`labelled` weight (Keras's sample weight: 1 for a labelled image, 0 for an unlabelled one, whose
label vector is ignored): the cross-entropy is averaged over the labelled images of the batch
(0 when there are none), the distillation term over every image, so an unlabelled image
weighs `1 - alpha` times its KL term, as a labelled image's distillation term does.

With `mixup` > 0 each training batch is mixed with a shuffled copy of itself (one weight per
batch, drawn from Beta(mixup, mixup)), the same mix for the teacher's view, the student's view,
the labels and the `labelled` weights: the teacher is asked about images between the training
images, where its answers carry the most that labels do not ("function matching", Beyer et al.
2022). A labelled image mixed with an unlabelled one keeps the labelled part of the mixed label
vector (a weight w of its one-hot vector, zeros for the rest) and a `labelled` weight of w:
the cross-entropy, linear in the label vector, is then mixup's own loss with the unknown
label's part left out, and it is averaged over the labelled share of the batch.

For unbalanced classes the cross-entropy term can be weighted by class (`class_weights`: one
weight per class, read from each image's label vector, so a mixed label mixes the weights and
an unlabelled image, whose vector is zeros, stays at 0) and focused (`focal_gamma`: the focal
loss, `-sum_c y_c (1 - p_c)^gamma log p_c`). Both act on the hard-label term alone: the
distillation term stays unweighted. The weighted sum is still divided by the labelled share
of the batch, as Keras divides a `class_weight`ed loss by the batch size.
"""

from __future__ import annotations

from vgg_mobile.core.errors import BadInputError, require, require_number
from vgg_mobile.training.hyperparameters import MAX_FOCAL_GAMMA

_DISTILLER_CLASS = None
# The layer a model's logits are read at; tfmot's QAT wraps it under `quant_` + its name.
LOGITS_LAYERS = ("logits", "quant_logits")


def logits_layer(model):
    """The layer of `model` whose output is its logits (`logits`, or `quant_logits` in a
    quantization-aware model), or `None`."""
    names = {layer.name: layer for layer in model.layers}
    return next((names[n] for n in LOGITS_LAYERS if n in names), None)


def distiller_class():
    """The `Distiller` class (built on first use, so importing this module stays light)."""
    global _DISTILLER_CLASS
    if _DISTILLER_CLASS is not None:
        return _DISTILLER_CLASS

    import tensorflow as tf
    import tf_keras as keras

    class Distiller(keras.Model):
        """Trains `student` on labels and on a frozen `teacher`'s softened logits.

        `call()` returns the student's output, so `distiller(x)` equals `student(x)`.
        Training data is `(x, one_hot_labels)` or `(x, one_hot_labels, labelled)`, where `x`
        is the student's input, or a pair `(student_view, teacher_view)` when the two models
        take different sizes, and `labelled` is 1 for a labelled image and 0 for an unlabelled
        one (see the module's docstring). With `teacher=None` (and alpha 1) it trains the
        student on labels alone, the baseline.
        """

        def __init__(self, student, teacher, temperature: float = 2.0, alpha: float = 0.5,
                     mixup: float = 0.0, class_weights=None, focal_gamma: float = 0.0,
                     teacher_tta: bool = False, **kwargs):
            super().__init__(name=kwargs.pop("name", "distiller"), **kwargs)
            if teacher is None and alpha != 1:
                raise BadInputError(f"a distiller without a teacher needs alpha 1. Received: alpha={alpha}")
            self.student = student
            self.teacher = teacher
            self.temperature = float(temperature)
            self.alpha = float(alpha)
            self.mixup = float(mixup)
            self.focal_gamma = float(focal_gamma)
            self.class_weights = (None if class_weights is None
                                  else tf.constant(class_weights, tf.float32))
            self.teacher_tta = bool(teacher_tta)
            # Sub-models sharing the layers (and weights) of each model up to its logits.
            self.student_logits = keras.Model(student.input, logits_layer(student).output,
                                              name="student_logits")
            self.student_size = tuple(student.input_shape[1:3])
            if teacher is not None:
                teacher.trainable = False
                self.teacher_logits = keras.Model(teacher.input, logits_layer(teacher).output,
                                                  name="teacher_logits")
                self.teacher_size = tuple(teacher.input_shape[1:3])
            self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
            self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
            self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
            self.accuracy_tracker = keras.metrics.CategoricalAccuracy(name="accuracy")

        @property
        def metrics(self):
            trackers = [self.student_loss_tracker, self.accuracy_tracker]
            if self.teacher is not None:
                trackers += [self.distillation_loss_tracker, self.total_loss_tracker]
            return trackers

        def call(self, inputs, training=False):
            if isinstance(inputs, (tuple, list)):
                inputs = inputs[0]
            return self.student(inputs, training=training)

        def _views(self, x):
            if isinstance(x, (tuple, list)):
                return x[0], x[1]
            if self.teacher is None or self.teacher_size == self.student_size:
                return x, x
            return x, tf.image.resize(x, self.teacher_size, method="bilinear")

        def teacher_answers(self, teacher_x):
            """The teacher's logits on its view (`mirror_averaged_logits` with `teacher_tta`)."""
            if not self.teacher_tta:
                return self.teacher_logits(teacher_x, training=False)
            return mirror_averaged_logits(self.teacher_logits, teacher_x, self.temperature)

        def distillation_loss(self, teacher_logits, student_logits):
            return softened_kl(teacher_logits, student_logits, self.temperature)

        def student_loss(self, labels, student_logits, labelled=None, by_class=True):
            return label_loss(labels, student_logits, self.focal_gamma,
                              self.class_weights if by_class else None, labelled)

        def _mix(self, student_x, teacher_x, y, labelled):
            return mix_batch(self.mixup, student_x, teacher_x, tf.cast(y, tf.float32), labelled)

        def train_step(self, data):
            x, y, labelled = keras.utils.unpack_x_y_sample_weight(data)
            student_x, teacher_x = self._views(x)
            y = tf.cast(y, tf.float32)
            labelled = (tf.ones_like(y[:, 0]) if labelled is None
                        else tf.reshape(tf.cast(labelled, tf.float32), [-1]))
            y = y * labelled[:, None]  # an unlabelled image has no label, whatever its vector
            if self.mixup > 0:
                student_x, teacher_x, y, labelled = self._mix(student_x, teacher_x, y, labelled)
            teacher_logits = (self.teacher_answers(teacher_x)
                              if self.teacher is not None else None)
            variables = self.student.trainable_variables
            with tf.GradientTape() as tape:
                logits = self.student_logits(student_x, training=True)
                student_loss = self.student_loss(y, logits, labelled)
                if teacher_logits is not None:
                    distillation_loss = self.distillation_loss(teacher_logits, logits)
                    total_loss = self.alpha * student_loss + (1 - self.alpha) * distillation_loss
                else:
                    total_loss = student_loss
                regularization = self.student.losses
                objective = total_loss + tf.add_n(regularization) if regularization else total_loss
            # `minimize` with the tape applies loss scaling when the optimizer has it (mixed
            # precision); otherwise it is `apply_gradients(tape.gradient(...))`.
            self.optimizer.minimize(objective, variables, tape=tape)
            # A batch without a labelled image has no cross-entropy to report (not a zero one);
            # the accuracy counts labelled images only.
            self.student_loss_tracker.update_state(
                student_loss, sample_weight=tf.cast(tf.reduce_sum(labelled) > 0, tf.float32))
            self.accuracy_tracker.update_state(y, tf.nn.softmax(logits), sample_weight=labelled)
            if teacher_logits is not None:
                self.distillation_loss_tracker.update_state(distillation_loss)
                self.total_loss_tracker.update_state(total_loss)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
            student_x, _ = self._views(x)
            logits = self.student_logits(student_x, training=False)
            # Unweighted by class, as Keras leaves a `class_weight`ed model's validation loss.
            self.student_loss_tracker.update_state(self.student_loss(y, logits, by_class=False))
            self.accuracy_tracker.update_state(y, tf.nn.softmax(logits))
            return {"student_loss": self.student_loss_tracker.result(),
                    "accuracy": self.accuracy_tracker.result()}

    _DISTILLER_CLASS = Distiller
    return Distiller


def mirror_averaged_logits(logits_of, x, temperature: float):
    """Logits whose softened distribution is the mean of `logits_of`'s softened answers on the
    images `x` and their left-right mirrors: `T * log(mean(softmax(z / T)))`, which
    `log_softmax(. / T)` turns back into the mean's logarithm, so the loss takes them as they
    are (one pass over both halves)."""
    import tensorflow as tf

    batch = tf.shape(x)[0]
    both = logits_of(tf.concat([x, tf.reverse(x, axis=[2])], 0), training=False)
    log_p = tf.nn.log_softmax(tf.cast(both, tf.float32) / temperature)
    mean = tf.reduce_logsumexp(tf.stack([log_p[:batch], log_p[batch:]]), axis=0)
    return temperature * (mean - tf.math.log(2.0))


def softened_kl(teacher_logits, student_logits, temperature: float):
    """`T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch.

    The T^2 keeps the gradients of the soft term on the scale of the hard one as T changes
    (Hinton et al., 2015).
    """
    import tensorflow as tf

    t = temperature
    teacher_log_p = tf.nn.log_softmax(tf.cast(teacher_logits, tf.float32) / t)
    student_log_p = tf.nn.log_softmax(tf.cast(student_logits, tf.float32) / t)
    kl = tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1)
    return t * t * tf.reduce_mean(kl)


def label_loss(labels, logits, focal_gamma: float = 0.0, class_weights=None, labelled=None):
    """The cross-entropy (focal with `focal_gamma`, weighted by `class_weights`), averaged over
    the batch, or over its labelled share when `labelled` weights are given (0 for a batch
    without a labelled image)."""
    import tensorflow as tf

    from vgg_mobile.training.losses import focal_crossentropy

    # `-sum(y * log_softmax)`, linear in `labels` in value and gradient: an all-zero vector (an
    # unlabelled image) costs 0 and pushes nothing. Not Keras's cross-entropy from logits: its
    # fused op's gradient is `softmax - y`, which assumes labels summing to 1 and pushed every
    # unlabelled image away from the student's own answer.
    labels = tf.cast(labels, tf.float32)
    losses = focal_crossentropy(labels, logits, focal_gamma)
    if class_weights is not None:
        # Each image's class weight, read from its label vector (mixed for a mixed one; a share
        # w of a label vector already scales its loss by w).
        losses = losses * tf.math.divide_no_nan(
            tf.reduce_sum(labels * class_weights, axis=-1), tf.reduce_sum(labels, axis=-1))
    if labelled is None:
        return tf.reduce_mean(losses)
    return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(labelled))


def mix_batch(alpha: float, *tensors):
    """Mixup: every tensor (`None` stays `None`) with a shuffled copy of its batch, by one
    weight per batch drawn from Beta(alpha, alpha)."""
    import tensorflow as tf

    a = tf.random.gamma([], alpha)
    b = tf.random.gamma([], alpha)
    weight = a / (a + b)
    order = tf.random.shuffle(tf.range(tf.shape(tensors[0])[0]))
    return tuple(None if t is None else weight * t + (1 - weight) * tf.gather(t, order)
                 for t in tensors)


def build_distiller(student, teacher, temperature: float = 2.0, alpha: float = 0.5,
                    mixup: float = 0.0, class_weights=None, focal_gamma: float = 0.0,
                    teacher_tta: bool = False):
    """Wraps a student and a (frozen) teacher in a `Distiller`.

    Args:
        student: A classifier with a `logits` layer; trained.
        teacher: A classifier with a `logits` layer and the same classes; frozen. `None`
            trains the student on labels alone (needs `alpha=1`).
        temperature: Softening temperature, > 0. Defaults to `2.0`.
        alpha: Weight of the hard-label loss, in [0, 1]. Defaults to `0.5`.
        mixup: Beta parameter of the batch mixup; 0 turns it off. Defaults to `0.0`.
        class_weights: One weight per class, >= 0, for the hard-label term (e.g.
            `dataset.class_weights`); `None` weighs every class 1. Defaults to `None`.
        focal_gamma: The hard-label term's focal exponent; 0 is the plain cross-entropy.
            Defaults to `0.0`.
        teacher_tta: The teacher's soft answers average the image and its left-right mirror
            (test-time augmentation of the teacher; one more teacher pass per batch).
            Defaults to `False`.

    Returns:
        An uncompiled `Distiller` (a `tf_keras.Model`).

    Raises:
        BadInputError: A model without a `logits` layer, different class counts, or a
            temperature or alpha out of range.
    """
    if not temperature > 0:
        raise BadInputError(f"temperature must be > 0. Received: temperature={temperature}")
    if not 0 <= alpha <= 1:
        raise BadInputError(f"alpha must be in [0, 1]. Received: alpha={alpha}")
    if not mixup >= 0:
        raise BadInputError(f"mixup must be >= 0. Received: mixup={mixup}")
    require_number(focal_gamma, "focal_gamma", 0, MAX_FOCAL_GAMMA)
    if class_weights is not None:
        class_weights = tuple(class_weights)
        require(len(class_weights) == student.output_shape[-1],
                f"class_weights needs one weight per class ({student.output_shape[-1]})",
                f"class_weights={class_weights!r}")
        for weight in class_weights:
            require_number(weight, "class_weights", 0)
    for role, model in (("student", student), ("teacher", teacher)):
        if model is not None and logits_layer(model) is None:
            raise BadInputError(f"the {role} model {model.name!r} has no 'logits' layer")
    if teacher is not None and teacher.output_shape[-1] != student.output_shape[-1]:
        raise BadInputError(
            f"teacher and student disagree on the number of classes: "
            f"{teacher.output_shape[-1]} vs {student.output_shape[-1]}")
    return distiller_class()(student, teacher, temperature=temperature, alpha=alpha, mixup=mixup,
                             class_weights=class_weights, focal_gamma=focal_gamma,
                             teacher_tta=teacher_tta)
