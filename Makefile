# The commands of the README: `make demo`, `make test` and `make cni-bin`. Each creates its own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# The node's CNI executable: a static C forwarder per architecture, built with Zig's C compiler from PyPI (the
# `ziglang` wheel, in the test extras), and the Python fallback (a zipapp run by the host's python3).
# The image build passes its own interpreter: make cni-bin CNI_PY=/path/to/python CNI_DEPS=
CNI_PY ?= $(BIN)/python
CNI_DEPS ?= $(BIN)/.installed
CNI_BIN := build/cni-bin
HOST_PYTHON ?= /usr/bin/python3
CNI_CFLAGS := -std=gnu11 -static -Os -s -Wall -Wextra -Werror
ARCH := $(shell uname -m | sed -e s/x86_64/amd64/ -e s/aarch64/arm64/)

.PHONY: demo test protos clean cni-bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed cni-bin
	$(BIN)/python hack/demo.py

test: $(BIN)/.installed cni-bin
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

protos: $(BIN)/.installed
	PYTHON=$(BIN)/python hack/gen-protos.sh

cni-bin: $(CNI_BIN)/vnfio $(CNI_BIN)/linux-amd64/vnfio $(CNI_BIN)/linux-arm64/vnfio $(CNI_BIN)/vnfio-inproc

$(CNI_BIN)/linux-amd64/vnfio: cni/forwarder/vnfio.c | $(CNI_DEPS)
	mkdir -p $(@D)
	$(CNI_PY) -m ziglang cc -target x86_64-linux-musl $(CNI_CFLAGS) -o $@.tmp $< && mv $@.tmp $@

$(CNI_BIN)/linux-arm64/vnfio: cni/forwarder/vnfio.c | $(CNI_DEPS)
	mkdir -p $(@D)
	$(CNI_PY) -m ziglang cc -target aarch64-linux-musl $(CNI_CFLAGS) -o $@.tmp $< && mv $@.tmp $@

$(CNI_BIN)/vnfio: $(CNI_BIN)/linux-$(ARCH)/vnfio
	cp $< $@.tmp && mv $@.tmp $@

$(CNI_BIN)/vnfio-inproc: $(shell find cni -name '*.py') | $(CNI_DEPS)
	$(CNI_PY) -m cni.bundle --python $(HOST_PYTHON) $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
