# Set-up and the two commands of the README. Everything lands in .venv inside the repository;
# pip's full output goes to .venv/install.log (the terminal gets a line per step).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LOG    := $(VENV)/install.log
# what the digits demo needs: torch, torchvision and the core's dependencies (timm, mmengine,
# scikit-learn for the digits); everything else is for `make test` / `make install-all`
DEMO_STAMP := $(VENV)/.demo-stamp
STAMP      := $(VENV)/.installed-stamp
# a step's pip, its output in the log, the log's end on the terminal when it fails
PIP = $(PY) -m pip install --progress-bar off
QUIET = >>$(LOG) 2>&1 || { echo "failed; the end of $(LOG):"; tail -n 25 $(LOG); exit 1; }

.PHONY: install install-demo install-all d2 demo test clean-venv

install-demo: $(DEMO_STAMP)
install-all: $(STAMP)
install: install-all

$(DEMO_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "set-up 1/2: pip, torch 2.9.1 and torchvision 0.24.1 into $(VENV) (log: $(LOG))"
	@$(PIP) --upgrade pip 'setuptools<70' wheel $(QUIET)
	@$(PIP) torch==2.9.1 torchvision==0.24.1 $(QUIET)
	@echo "set-up 2/2: bikd and what the demo needs (timm, mmengine, scikit-learn)"
	@$(PIP) -e '.[demo]' $(QUIET)
	@touch $@

# torch is pinned to 2.9.1 + torchvision 0.24.1: mmcv 2.1.0 (mmsegmentation's) compiles only
# against torch <= 2.9. mmcv imports torch in its build, so it is built in its own step without
# build isolation (pip caches the built wheel; the first build takes about 9 minutes on 2 cores).
$(STAMP): $(DEMO_STAMP)
	@echo "set-up: mmcv 2.1.0 (built from source the first time: about 9 minutes on 2 cores)"
	@$(PIP) ninja $(QUIET)
	@$(PY) -c 'import mmcv.ops' 2>/dev/null || \
		MMCV_WITH_OPS=1 $(PIP) --no-build-isolation mmcv==2.1.0 $(QUIET)
	@echo "set-up: segmentation, Mask2Former's needs, transformers, the test tools"
	@$(PIP) -e '.[seg,d2,hf,demo,test]' $(QUIET)
	@touch $@

# detectron2 (built from source against the pinned torch; the wheel is kept in pip's cache
# folder) and the official Mask2Former on the environment's path, from ../shared/vendor/ when
# the source snapshots are there, else from GitHub: see tools/install_d2.py.
d2: install-all
	@$(PY) tools/install_d2.py --optional

demo: install-demo
	$(PY) tools/demo.py --task digits

# two test processes, a file's tests in one of them (its module fixtures made once), one
# thread of torch each: this machine's two cores kept busy through the waits of the
# multi-process and Slurm tests (about 1.4x faster than one process on 2 cores)
test: install-all d2
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile tests

clean-venv:
	rm -rf $(VENV)
