# The two commands: `make demo` runs the main job, `make test` the whole suite.
# Both create .venv and install what the project needs, system packages included, if missing.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench loadtest storm soak system-deps clean

demo: $(STAMP)
	$(VENV)/bin/gateway-demo

test: $(STAMP) system-deps
	$(PY) -m pytest

# Figures, never pass/fail: each prints a table and writes JSON under reports/.
bench: $(STAMP)
	mkdir -p reports
	$(PY) benchmarks/codec.py --json reports/codec.json
	$(PY) benchmarks/bus.py --json reports/bus.json
	$(PY) benchmarks/zk.py --json reports/zk.json
	$(PY) benchmarks/hostile.py --json reports/hostile.json
	$(PY) benchmarks/zk_poll.py --json reports/zk_poll.json
	$(PY) benchmarks/reconnect_storm.py --devices 1000 --json reports/reconnect_storm.json
	$(PY) benchmarks/push_attlog.py --json reports/push_attlog.json
	$(PY) benchmarks/push_propagation.py --devices 100 --json reports/push_propagation.json

# Ten thousand terminals dial one gateway process at once, then idle: time to online, RSS per
# terminal, CPU at idle (benchmarks/reconnect_storm.py; STORM_DEVICES to change the count).
STORM_DEVICES ?= 10000
storm: $(STAMP)
	mkdir -p reports
	$(PY) benchmarks/reconnect_storm.py --devices $(STORM_DEVICES) --json reports/reconnect_storm_$(STORM_DEVICES).json

# One 60 s storm, then the capacity search: one 15 s run per rate of the default ladder, up to the first
# that does not hold (p99 propagation over 2 s twice, or anything lost), on SQLite and then, when a
# PostgreSQL server is installed, on a throwaway cluster of it (fsync on), printed side by side.
# About 10 to 20 minutes in all.
loadtest: $(STAMP)
	mkdir -p reports
	$(VENV)/bin/gateway-loadtest --devices 200 --scenario enroll-storm --duration 60 --json reports/loadtest.json
	$(PY) -m tools.loadtest.side_by_side --devices 200 --scenario enroll-storm --duration 15 --json reports/capacity.json
	$(MAKE) loadtest-cpu

# Gateway CPU per delivery at a low and a high rate side by side (1 and 20 enrolments/s, 20 s each;
# docs/loadtest.md, "A lone delivery"): the table's CPU us/deliv column.
.PHONY: loadtest-cpu
loadtest-cpu: $(STAMP)
	mkdir -p reports
	$(VENV)/bin/gateway-loadtest --devices 200 --scenario enroll-storm --duration 20 --seed 4711 --find-capacity --whole-ladder --ladder 1,20 --json reports/cpu_per_delivery.json

# Not in `make test`: thirty minutes (SOAK_MINUTES) of churn with gateway SIGKILLs and a database
# outage; prints lost / duplicated / diverged and the gateway's RSS over time, and plots it.
SOAK_MINUTES ?= 30
soak: $(STAMP)
	mkdir -p reports
	$(PY) -m pip install -q -e '.[test,plot]'
	$(VENV)/bin/gateway-soak --minutes $(SOAK_MINUTES) --json reports/soak.json --plot reports/soak.png

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Debian packages the tests drive for real: a PostgreSQL server, socat for ptys, a browser.
# Installs only what is missing, so a prepared machine pays nothing.
system-deps:
	@missing=""; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

clean:
	rm -rf $(VENV) build reports demo *.egg-info .pytest_cache .hypothesis
