# One-command set-up, demo and tests on a fresh machine with Python 3 (3.11 recommended).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sact-det-installed

.PHONY: install test demo clean-venv

install: $(STAMP)

$(STAMP): setup.py scripts/install_detectron2.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	scripts/install_detectron2.sh $(PY)
	$(PY) -m pip install --quiet -e ".[dev,tf]"
	$(PY) -c "import torch, detectron2, sact_det; print('torch', torch.__version__, '| detectron2', detectron2.__version__, '| sact_det ok')"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) tools/train_demo.py --output-dir output/demo

clean-venv:
	rm -rf $(VENV)
