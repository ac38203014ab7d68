# One command each: `make lab` (set up if needed, then open the course) and `make test` (set up, then all tests);
# `make student` and `make book` build the classroom kit (docs/instructor_guide.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COURSE_STAMP := $(VENV)/.course-installed
TEST_STAMP := $(VENV)/.tests-installed
# JupyterLab refuses to run as root (containers) unless told it may.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
LAB_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help setup lab test outputs bench student book clean-venv

help:
	@echo "make lab      set up .venv if needed, then open JupyterLab on notebooks/00_welcome.ipynb"
	@echo "make test     set up .venv (with test tools) if needed, then run the unit, notebook and browser tests"
	@echo "make outputs  re-run every notebook top to bottom and store its outputs"
	@echo "make bench    run the LoRA benchmark (python -m lora_edu.bench)"
	@echo "make student  copies of the notebooks without solutions, exercise outputs cleared, in student/"
	@echo "make book     a static HTML site of the course from the stored notebooks, in book/ (open book/index.html)"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "the course needs Python >= 3.10; found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)

$(COURSE_STAMP): requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -r requirements.txt -e .
	@touch $@

$(TEST_STAMP): requirements-test.txt $(COURSE_STAMP)
	$(BIN)/python -m pip install -r requirements-test.txt
	@touch $@

setup: $(COURSE_STAMP)

lab: $(COURSE_STAMP)
	cd notebooks && $(abspath $(BIN))/jupyter lab $(ROOT_FLAG) $(LAB_ARGS) 00_welcome.ipynb

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

outputs: $(TEST_STAMP)
	$(BIN)/python tools/store_outputs.py

bench: $(COURSE_STAMP)
	$(BIN)/python -m lora_edu.bench

student: $(COURSE_STAMP)
	$(BIN)/python tools/make_student.py student

book: $(COURSE_STAMP)
	$(BIN)/python tools/make_book.py book

clean-venv:
	rm -rf $(VENV)
