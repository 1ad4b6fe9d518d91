"""Exporters: TFLite (with metadata), TensorFlow.js bundles and Android assets.

All tflite-support and tensorflowjs imports live in this package, inside the functions that
need them.
"""
