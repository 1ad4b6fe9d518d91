"""Image files and folders: checked decoding, splits, tf.data pipelines, the sample data."""
