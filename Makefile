# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
LEDGER ?= greenmaas.db

.PHONY: venv demo test bench bench-overhead accuracy ledger-bench html-report bench-serving ci clean typecheck

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[torch,test]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) examples/quickstart.py --ledger $(LEDGER)
	$(VENV)/bin/greenmaas report --ledger $(LEDGER) --by model
	$(VENV)/bin/greenmaas report --ledger $(LEDGER) --by phase
	$(VENV)/bin/greenmaas report --ledger $(LEDGER) --by tenant --location FR --price 0.25EUR/kWh
	$(VENV)/bin/greenmaas report --ledger $(LEDGER) --by model --location FR --format eu-ai-act --output demo-eu-ai-act.md
	$(VENV)/bin/greenmaas report --ledger $(LEDGER) --by model --location FR --format html --output demo-report.html

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) examples/bench_attribution.py
	$(PY) examples/bench_overhead.py
	$(PY) examples/bench_accuracy.py

bench-overhead: venv
	$(PY) examples/bench_overhead.py

accuracy: venv
	$(PY) examples/bench_accuracy.py

html-report: venv
	$(PY) examples/render_report.py

bench-serving: venv
	$(PY) examples/bench_serving.py
	$(PY) examples/bench_serving_cost.py

ci:
	.ci/run

ledger-bench: venv
	$(PY) examples/bench_ledger.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

typecheck: venv
	$(PY) -m mypy greenmaas
