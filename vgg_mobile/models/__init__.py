"""The architectures, registered as data, built as flat tf_keras models with their preprocessing inside."""
