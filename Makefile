# dbevents developer commands. `make demo` and `make test` set everything up on a fresh machine.

SHELL := /bin/bash
# Django 5.2 LTS on the default Python 3.11; Django 6.x on Python 3.13 (or 3.12).
PY_DJ52 ?= $(shell scripts/find-python 3.11)
PY_DJ6  ?= $(shell scripts/find-python 3.13 3.12)
VENV_DJ52 := .venv-dj52
VENV_DJ6  := .venv-dj6
DATABASES ?= sqlite postgresql mysql
PYTEST_ARGS ?=

.PHONY: demo test test-dj52 test-dj6 lint sysdeps clean

demo: $(VENV_DJ52)/.installed
	$(VENV_DJ52)/bin/python demo/run.py

test: lint test-dj52 test-dj6

test-dj52: $(VENV_DJ52)/.installed
	@set -e; for db in $(DATABASES); do \
	  echo "=== Django 5.2 / $$db ==="; \
	  DBEVENTS_TEST_DB=$$db $(VENV_DJ52)/bin/python -m pytest $(PYTEST_ARGS); \
	done

test-dj6: $(VENV_DJ6)/.installed
	@set -e; for db in $(DATABASES); do \
	  echo "=== Django 6 / $$db ==="; \
	  DBEVENTS_TEST_DB=$$db $(VENV_DJ6)/bin/python -m pytest $(PYTEST_ARGS); \
	done

lint: $(VENV_DJ52)/.installed
	$(VENV_DJ52)/bin/ruff check dbevents tests demo scripts
	$(VENV_DJ52)/bin/mypy dbevents

# mysqlclient compiles against the MariaDB client library.
sysdeps:
	@pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq libmariadb-dev pkg-config; \
	  else \
	    echo "Install the MariaDB/MySQL client headers (Debian: apt-get install libmariadb-dev pkg-config)"; exit 1; \
	  fi; }

$(VENV_DJ52)/.installed: setup.cfg pyproject.toml requirements-test.txt | sysdeps
	@test -n "$(PY_DJ52)" || { echo "Python 3.11 not found"; exit 1; }
	rm -rf $(VENV_DJ52) && $(PY_DJ52) -m venv $(VENV_DJ52)
	$(VENV_DJ52)/bin/pip install -q --upgrade pip
	$(VENV_DJ52)/bin/pip install -q -e ".[postgresql,mysql]" -r requirements-test.txt "Django>=5.2,<5.3"
	touch $@

$(VENV_DJ6)/.installed: setup.cfg pyproject.toml requirements-test.txt | sysdeps
	@test -n "$(PY_DJ6)" || { echo "Python 3.13 or 3.12 (needed by Django 6) not found"; exit 1; }
	rm -rf $(VENV_DJ6) && $(PY_DJ6) -m venv $(VENV_DJ6)
	$(VENV_DJ6)/bin/pip install -q --upgrade pip
	$(VENV_DJ6)/bin/pip install -q -e ".[postgresql,mysql]" -r requirements-test.txt "Django>=6.0,<7"
	touch $@

clean:
	rm -rf $(VENV_DJ52) $(VENV_DJ6) *.egg-info .pytest_cache
