# Two entry points for a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   set up .venv and run the end-to-end demo
#   make test   set up .venv and run every test (lint included)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt setup.py Makefile | cksum | cut -d' ' -f1)

# DDS discovery stays on this machine for everything started from here; each target its own domain.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 57
export PYTHONUNBUFFERED := 1

.PHONY: setup test lint demo bench clean

# Triton is installed apart: a CUDA build of torch brings the one it pairs with; the CPU build
# brings none, and the tests run our farthest point sampling kernel in Triton's interpreter and
# compile it for a GPU without one (test/test_fps_kernel.py).
$(STAMP): requirements.txt setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c 'import triton' 2>/dev/null || $(PY) -m pip install -q triton==3.5.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

lint: setup
	$(PY) -m flake8 dbmr_ros test benchmarks launch setup.py

test: setup
	$(PY) -m pytest -q -rfEs test

demo: setup
	$(PY) -m dbmr_ros.demo

bench: setup
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_node.py

clean:
	rm -rf build install log demo_output
