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

# Two pytest workers, each test file on one of them (its module fixtures built once): on 2 cores the
# suite takes 3.5 min against 5.5 min in one process (the tests wait on process start-up and model loading
# as much as they compute). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -rs --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

clean:
	rm -rf $(VENV) runs
