# Set-up and the two commands of the README. Everything lands in .venv inside the repository.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install d2 demo test clean-venv

install: $(STAMP)

# torch is pinned to 2.9.1 + torchvision 0.24.1: mmcv 2.1.0 (mmsegmentation's) compiles only
# against torch <= 2.9. mmcv imports torch in its build, so it is built in its own step without
# build isolation (pip caches the built wheel; the first build takes about 9 minutes on 2 cores).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<70' wheel ninja
	$(PY) -m pip install -q torch==2.9.1 torchvision==0.24.1
	$(PY) -c 'import mmcv.ops' 2>/dev/null || \
		MMCV_WITH_OPS=1 $(PY) -m pip install --no-build-isolation mmcv==2.1.0
	$(PY) -m pip install -q -e '.[seg,d2,hf,demo,test]'
	touch $(STAMP)

# detectron2 (built from source against the pinned torch; the wheel is kept in pip's cache
# folder) and the official Mask2Former on the environment's path, from ../shared/vendor/ when
# the source snapshots are there, else from GitHub: see tools/install_d2.py.
d2: install
	$(PY) tools/install_d2.py --optional

demo: install
	$(PY) tools/demo.py --task digits

test: install d2
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
