# Two commands do all set-up on a fresh machine (Python 3.11+ and make): `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# `make run` is the demo: the sandboxes stand in for Raynet and Microsoft 365, seeded once with a demo
# organization (syncapp/demo.py). DEMO=0 for a real install. The sandboxes and our callback endpoints are
# served over HTTPS (MSAL accepts only https) at PORT + 443 unless DEMO_HTTPS_URL says otherwise.
DEMO ?= 1
DEMO_HTTPS_URL ?= https://127.0.0.1:$(shell echo $$(($(PORT) + 443)))
DEMO_ENV := DEMO=$(DEMO) DEMO_HTTPS_URL=$(DEMO_HTTPS_URL)

.PHONY: run demo-reset test bench lint migrate worker stopdb clean catalogues messages

$(VENV)/.installed: requirements/base.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

# Translations are compiled in the build (polib: no GNU gettext needed).
catalogues: $(VENV)/.installed
	$(PY) manage.py compile_catalogues

migrate: catalogues
	$(PY) manage.py migrate --no-input
	$(PY) manage.py createcachetable

# The web server and the background worker together (with the demo: the HTTPS server and the seed, which
# prints the demo's login), in the foreground; Ctrl-C stops everything.
run: migrate
	$(PY) manage.py setup_schedules
	$(DEMO_ENV) $(PY) manage.py run_portal 127.0.0.1:$(PORT)

# The demo's data from scratch: the demo organization and both sandboxes are made again (the logins stay).
demo-reset: migrate
	DEMO=1 DEMO_HTTPS_URL=$(DEMO_HTTPS_URL) $(PY) manage.py seed_demo --reset --portal-url http://127.0.0.1:$(PORT)/

# The worker alone (a second machine, or with the web server run elsewhere).
worker: migrate
	$(PY) manage.py setup_schedules
	$(PY) manage.py qcluster

test: catalogues
	$(PY) -m pytest

# Issue 12's performance figures (not part of `make test`; see tests/bench/__main__.py).
bench: $(VENV)/.installed
	$(PY) -m tests.bench $(BENCH_ARGS)

# After changing a string in code or templates: refresh the catalogue, translate, `make test` checks it.
messages: $(VENV)/.installed
	$(PY) manage.py makemessages -l cs --no-obsolete --ignore=.venv --ignore=tests --ignore=static-collected

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

stopdb:
	@if [ -x $(PY) ]; then $(PY) -m portal.database stop; fi

clean: stopdb
	rm -rf $(VENV) .pgdata
