"""`vgg-mobile serve-model`: an exported classifier behind HTTP (FastAPI, uvicorn).

`models` loads and checks a `.tflite` or `.onnx` model and runs it from several threads;
`repository` reads a model repository of numbered export folders; `app` is the FastAPI app
(predict, feedback, health, model, metrics, reload and rollback, the root, the OpenAPI spec
and its docs page); `open_inference` adds the Open Inference Protocol (KServe v2) routes;
`traffic` splits requests between versions (canary, A/B, shadow) and compares their answers;
`rollback` judges the version tried out and remembers answers for feedback; `metrics` holds
the Prometheus metrics; `server` what uvicorn and the process need beyond the app.
"""
