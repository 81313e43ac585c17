# make demo: install, build the synthetic corpus, extract with the offline profile, train, report.
# make test: install and run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
DEMO_N ?= 300

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/msf demo --out $(DEMO_OUT) --n $(DEMO_N)

test: install
	$(BIN)/python -m pytest -q -rs --durations=15

clean:
	rm -rf $(VENV) runs
