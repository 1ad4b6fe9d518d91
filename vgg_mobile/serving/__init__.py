"""`vgg-mobile serve-model`: an exported classifier behind HTTP (FastAPI, uvicorn).

`models` loads and checks a `.tflite` or `.onnx` model and runs it from several threads;
`app` is the FastAPI app over it (predict, health, model, metrics, reload and rollback, the root, the OpenAPI spec
and its docs page);
`metrics` its Prometheus counters.
"""
