# lowbit — two commands: `make lab` (set up and open JupyterLab; `make lab TORCH=cpu` for CPU-only PyTorch)
# and `make test` (run the test suite).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# nbgrader runs `alembic` in a subprocess: the venv's bin must be on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
# TORCH=cpu installs PyTorch's CPU-only wheels first (laptops: no CUDA libraries, a much smaller venv; see
# README "Start"); the default takes torch from your pip index as it is (on Linux: the CUDA build).
TORCH  ?= default
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(filter default cpu,$(TORCH)),)
$(error TORCH must be "cpu" or "default", got "$(TORCH)")
endif
STAMP  := $(VENV)/.installed$(if $(filter cpu,$(TORCH)),-cpu,)

.PHONY: lab test venv release notebooks bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(TORCH),cpu)
	$(BIN)/python -m pip install --quiet --index-url $(TORCH_CPU_INDEX) torch torchvision
	@$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.version.cuda is None else \
		f'$(VENV) already holds a CUDA build of torch {torch.__version__}: make clean-venv, then make lab TORCH=cpu')"
endif
	$(BIN)/python -m pip install --quiet -e ".[course,dev]"
	$(BIN)/jupyter labextension list >/dev/null 2>&1 || true
	@touch $(STAMP)

# Jupyter refuses to run as root without --allow-root (containers, CI images).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
JUPYTER_ARGS ?=

# Serves the repository root (labs/ and the worked solutions in course/notebooks/), opened on labs/; the
# terminal starts in the root too, so `autograder check labs/<lab>/<lab>.ipynb` works there as written.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=. --ServerApp.default_url=/lab/tree/labs $(ROOT_FLAG) $(JUPYTER_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# Release and grading: see course/instructor-guide.md. The grader's sandbox needs bubblewrap (apt-get install bubblewrap).
release: $(STAMP)
	$(BIN)/python -m autograder release

# Worked solutions with their outputs, for reading (course/notebooks/); re-run after changing a solution.
notebooks: $(STAMP)
	$(BIN)/python course/build_notebooks.py

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)

# A course JupyterHub on 127.0.0.1:$(HUB_PORT) for a quick look (root: it creates an instructor and test students,
# passwords printed once): course/hub/, instructor guide "Running the course on JupyterHub". Needs
# configurable-http-proxy (apt-get install nodejs npm && npm install -g configurable-http-proxy).
HUB_PORT ?= 8000
.PHONY: hub
hub: $(STAMP)
	$(BIN)/python course/hub/hubctl.py demo --port $(HUB_PORT)
