# Two commands do everything on a fresh 2-core machine without GPU (see README):
#   make demo   venv + CPU install, GSM8K + demo model offline, the comparison of single / dp=2 / tp=2,
#               sized to the host (ends with the path of its report.html)
#   make test   venv + CPU install + SLURM daemons' and Chromium's Debian packages (apt-get: root or
#               sudo), then the whole test suite with every real part required (CI runs exactly this)
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0+cpu: pip takes it from a local wheel where one is configured (find-links), else from
# PyTorch's CPU wheel index; another index (a mirror): make demo TORCH_INDEX=https://...
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH := torch==2.13.0+cpu

.PHONY: install demo test clean
install: $(VENV)/.installed

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

demo: install
	./launchers/demo.sh

test: install
	bash slurm/install_deps.sh
	bash tests/install_browser.sh
	REQUIRE_REAL_PARTS=1 $(PY) -m pytest -q -rs

clean:
	rm -rf $(VENV) build *.egg-info
