"""vgg-mobile: fine-tune VGG16 on an image folder and ship it to phones and browsers."""

import os

# tensorflow-model-optimization only understands Keras 2 models, so every model here is a
# tf_keras model; TensorFlow must see this before it is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
