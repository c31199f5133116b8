# dbevents developer commands. `make demo` and `make test` set everything up on a fresh machine.

SHELL := /bin/bash
# Django 5.2 LTS on the default Python 3.11; Django 6.x on Python 3.13 (or 3.12).
PY_DJ52 ?= $(shell scripts/find-python 3.11)
PY_DJ6  ?= $(shell scripts/find-python 3.13 3.12)
VENV_DJ52 := .venv-dj52
VENV_DJ6  := .venv-dj6
REQ_DJ52  := Django>=5.2,<5.3
REQ_DJ6   := Django>=6.0,<7
DATABASES ?= sqlite postgresql mysql
PYTEST_ARGS ?=

.PHONY: demo test test-dj52 test-dj6 test-django lint sysdeps clean

demo: $(VENV_DJ52)/.installed
	$(VENV_DJ52)/bin/python demo/run.py

test: lint test-dj52 test-dj6

# $(call run-tests,VENV,LABEL): the suite on each of $(DATABASES).
define run-tests
	@set -e; for db in $(DATABASES); do \
	  echo "=== $(2) / $$db ==="; \
	  DBEVENTS_TEST_DB=$$db $(1)/bin/python -m pytest $(PYTEST_ARGS); \
	done
endef

# $(call make-venv,VENV,PYTHON,DJANGO REQUIREMENT): a virtualenv with the package and test tools.
define make-venv
	@test -n "$(2)" || { echo "no Python interpreter for $(1) (see scripts/find-python)"; exit 1; }
	rm -rf $(1) && $(2) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	$(1)/bin/pip install -q -e ".[postgresql,mysql]" -r requirements-test.txt "$(3)"
	touch $(1)/.installed
endef

test-dj52: $(VENV_DJ52)/.installed
	$(call run-tests,$(VENV_DJ52),Django 5.2)

test-dj6: $(VENV_DJ6)/.installed
	$(call run-tests,$(VENV_DJ6),Django 6)

# Django's own ORM tests through the dbevents engines, every model registered (scripts/django_suite.py):
# fails when a test that passes on the stock engine fails through dbevents. Django 5.2 on
# $(DATABASES); Django 6 on $(DJANGO6_DATABASES).
DJANGO6_DATABASES ?= sqlite postgresql
test-django: $(VENV_DJ52)/.installed $(VENV_DJ6)/.installed
	@set -e; for db in $(DATABASES); do $(VENV_DJ52)/bin/python scripts/django_suite.py --db $$db; done; \
	for db in $(DJANGO6_DATABASES); do $(VENV_DJ6)/bin/python scripts/django_suite.py --db $$db; done

lint: $(VENV_DJ52)/.installed
	$(VENV_DJ52)/bin/ruff check dbevents tests demo scripts bench
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
	$(call make-venv,$(VENV_DJ52),$(PY_DJ52),$(REQ_DJ52))

$(VENV_DJ6)/.installed: setup.cfg pyproject.toml requirements-test.txt | sysdeps
	$(call make-venv,$(VENV_DJ6),$(PY_DJ6),$(REQ_DJ6))

# The benchmark (bench/run.py, README "Performance"): dbevents against the stock engines and
# django-events-sourcing 0.8 against its disable_dispatcher(), events counted at RabbitMQ. Options:
# BENCH_DATABASES, BENCH_ROUNDS, BENCH_BULK_ROUNDS, BENCH_QUICK=1, BENCH_DELIVERY, BENCH_WORKLOADS.
BENCH_DES_VENV := bench/.venv-des
.PHONY: bench bench-profile

bench: $(VENV_DJ52)/.installed $(BENCH_DES_VENV)/.installed
	$(VENV_DJ52)/bin/python bench/run.py

# Where dbevents' time goes (bench/profiles/); yappi is a bench tool, not a package dependency.
bench-profile: $(VENV_DJ52)/.installed
	$(VENV_DJ52)/bin/pip install -q yappi
	$(VENV_DJ52)/bin/python -m bench.profile $(BENCH_WORKLOADS)

# django-events-sourcing 0.8 in a virtualenv of its own (it would clash with dbevents' app).
$(BENCH_DES_VENV)/.installed: bench/requirements-des.txt | sysdeps
	@test -n "$(PY_DJ52)" || { echo "no Python interpreter for $(BENCH_DES_VENV) (see scripts/find-python)"; exit 1; }
	rm -rf $(BENCH_DES_VENV) && $(PY_DJ52) -m venv $(BENCH_DES_VENV)
	$(BENCH_DES_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_DES_VENV)/bin/pip install -q -r bench/requirements-des.txt
	touch $@

clean:
	rm -rf $(VENV_DJ52) $(VENV_DJ6) *.egg-info .pytest_cache
