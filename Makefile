# Two commands for a fresh machine with only Python and pip:
#   make serve   set everything up and run the service on http://127.0.0.1:8000
#                (CONFIG=configs/<file>.yaml serves another config; default configs/local.yaml)
#   make test    set everything up and run the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch for local use; GPU hosts install the package's range instead.
TORCH_LOCAL := torch==2.13.0
DEMO_MODEL := models/whisper-base
STAMP := $(VENV)/.installed
CONFIG ?= configs/local.yaml

.PHONY: setup serve test demo-model bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet $(TORCH_LOCAL)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Idempotent: returns at once when a complete checkpoint is already there.
demo-model: $(STAMP)
	$(PY) -m serve_app.demo_model --output $(DEMO_MODEL)

setup: demo-model

# HAProxy (bundled with ray[serve]) takes port 8000 and forwards to the ingress replica's own
# HTTP server; the proxy guard (serve_app/proxy_hooks.py) caps request bodies where Ray first
# sees them: limits.max_upload_bytes in configs/local.yaml + 64 KiB of multipart framing.
serve: export RAY_SERVE_ENABLE_HA_PROXY = 1
serve: export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH = serve_app.proxy_hooks:proxy_middlewares
serve: export ASR_MAX_UPLOAD_BYTES = 104923136
serve: setup
	@echo "Starting the service on http://127.0.0.1:8000 (Ctrl-C stops it)"
	$(VENV)/bin/serve run $(CONFIG)

# tests/cluster start Ray clusters of their own (replica kills, node loss, serve deploy), so
# they run in a second pytest process once the main suite's Ray instance is gone.
test: setup
	$(PY) -m pytest --ignore=tests/cluster
	$(PY) -m pytest tests/cluster

bench: setup
	$(PY) -m pip install --quiet -e '.[test,bench]'
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) $(DEMO_MODEL)
