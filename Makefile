# Two commands do everything on a fresh Debian machine (no ROS installed):
#   make test   set up, then lint and run the test suite
#   make demo   set up, then run the demo (simulated camera + instance_seg_node over real DDS)
# Set-up is idempotent and stamp-driven: a second run with nothing changed takes seconds.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
REQS := requirements/ros.txt requirements/ml.txt requirements/dev.txt
GRASP_REQS := requirements/grasp.txt
MSG_SRC := instance_seg_msgs/CMakeLists.txt instance_seg_msgs/package.xml $(wildcard instance_seg_msgs/msg/*.msg)
PKG_SRC := instance_seg_ros/setup.py instance_seg_ros/setup.cfg instance_seg_ros/package.xml \
	$(wildcard instance_seg_ros/launch/*.py) $(wildcard instance_seg_ros/config/*.yaml)
PYTEST_ARGS ?=

REALDATA ?= ../shared/realdata

.PHONY: help setup setup-grasp test demo eval-real lint format clean distclean

help:
	@echo "make test    set up (venv, ROS 2 wheels, colcon build), lint, run the tests"
	@echo "make demo    set up, then run the demo (sim camera + instance_seg_node), outputs in demo_out/"
	@echo "make eval-real  the shipped model and the plane baseline on the real frames in REALDATA -> eval_real/"
	@echo "make setup   only the set-up;  then: source env.sh"
	@echo "make setup-grasp  (part of setup) the Contact-GraspNet extra, requirements/grasp.txt, ~7 s"
	@echo "make lint | clean | distclean"

setup: $(STAMPS)/build $(STAMPS)/grasp

$(STAMPS)/system:
	@mkdir -p $(STAMPS)
	scripts/install_system_deps.sh
	@touch $@

$(STAMPS)/venv: $(REQS) scripts/fix_wheel_cmake.sh
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/ros.txt -r requirements/ml.txt \
		-r requirements/dev.txt
	scripts/fix_wheel_cmake.sh $(VENV)
	@touch $@

# The Contact-GraspNet extra (instance_seg_ros.grasp): prebuilt wheels only, --no-deps (see requirements/grasp.txt).
# ~7 s here, so `setup` (and CI) includes it; the package itself imports and tests without it.
setup-grasp: setup

$(STAMPS)/grasp: $(STAMPS)/venv $(GRASP_REQS)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r $(GRASP_REQS)
	@touch $@

$(STAMPS)/build: $(STAMPS)/system $(STAMPS)/venv $(MSG_SRC) $(PKG_SRC)
	source ./env.sh && colcon --log-base log build --symlink-install \
		--base-paths instance_seg_msgs instance_seg_ros \
		--cmake-args -DPython3_EXECUTABLE=$(CURDIR)/$(PY) -DBUILD_TESTING=OFF
	@touch $@

lint: setup
	source ./env.sh && ruff check instance_seg_ros

test: setup
	source ./env.sh && ruff check instance_seg_ros && python -m pytest instance_seg_ros/test $(PYTEST_ARGS)

demo: setup
	source ./env.sh && isr demo

eval-real: setup
	source ./env.sh && isr eval --frames $(REALDATA) --baseline plane --out eval_real

format: setup
	source ./env.sh && ruff check --fix instance_seg_ros && ruff format instance_seg_ros

clean:
	rm -rf build install log $(STAMPS)/build demo_out eval_real

distclean: clean
	rm -rf $(VENV) $(STAMPS)
