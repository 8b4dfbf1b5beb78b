# The chat lab. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080

.DEFAULT_GOAL := help
.PHONY: help run-tcp test lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-redis.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run-tcp: ## start the TCP chat server on HOST:PORT (default 127.0.0.1:8080)
	$(PYTHON) -m tcp.server --host $(HOST) --port $(PORT)

.PHONY: chat-tcp demo-tcp
chat-tcp: ## TCP terminal client on HOST:PORT (NAME=alice to skip the question)
	$(PYTHON) -m tcp.client --host $(HOST) --port $(PORT) $(if $(NAME),--name $(NAME))

demo-tcp: ## scripted TCP chat: a server and three clients on a free port; stops by itself
	$(PYTHON) -m tcp.demo

.PHONY: run-udp chat-udp demo-udp
run-udp: ## start the UDP chat server on HOST:PORT (default 127.0.0.1:8080)
	$(PYTHON) -m udp.server --host $(HOST) --port $(PORT)

chat-udp: ## UDP terminal client on HOST:PORT, packet session (NAME=alice, RELIABLE=1 reliable, PACKETS=0 protocol 1.0)
	$(PYTHON) -m udp.client --host $(HOST) --port $(PORT) $(if $(NAME),--name $(NAME)) $(if $(RELIABLE),--reliable) $(if $(filter 0,$(PACKETS)),--no-packets)

demo-udp: ## scripted UDP chat: a server, three clients, two of them losing 20%; stops by itself
	$(PYTHON) -m udp.demo

.PHONY: run-cluster
run-cluster: $(VENV)/.installed ## one room on a Redis and three servers: TCP on PORT and PORT+1, UDP on PORT+2, Redis on PORT+3
	$(PY) -m benchmarks.runcluster --host $(HOST) --port $(PORT)

.PHONY: bench bench-full bench-cluster bench-chaos bench-attacks soak calibrate report
bench: $(VENV)/.installed ## quick benchmark suite (about 12 min on 2 cores): every transport (TCP, UDP 1.0 and packets), clean and lossy, and TCP past saturation -> benchmarks/results/
	$(PY) -m benchmarks

bench-full: $(VENV)/.installed ## the long benchmark suite: longer runs, more points
	$(PY) -m benchmarks --full

bench-cluster: $(VENV)/.installed ## one server against two sharing a room through Redis; the Redis targets at 200 x 5 and 200 x 25, median of 3 -> benchmarks/results/cluster.json
	$(PY) -m benchmarks.cluster --json benchmarks/results/cluster.json

bench-chaos: $(VENV)/.installed ## resume under chaos: 50 users, cuts every 2 s, a server killed every 30 s (4 x 5 min) -> benchmarks/results/chaos.json
	$(PY) -m benchmarks.chaos --json benchmarks/results/chaos.json

bench-attacks: $(VENV)/.installed ## the attacks the servers were once open to, again (lockout, flooder, held frames, a kill under load) and a 10 min soak with churn, each with its verdict (about 15 min) -> benchmarks/results/attacks.json
	$(PY) -m benchmarks.attacks --json benchmarks/results/attacks.json

soak: $(VENV)/.installed ## the soak alone: 100 users chatting for 10 min while users leave and join, every delivery checked
	$(PY) -m benchmarks.attacks soak

calibrate: $(VENV)/.installed ## the baseline against the assignment's example (../shared/seed/server.py): PASS or FAIL -> benchmarks/results/calibration.json
	$(PY) -m benchmarks.calibrate

report: $(VENV)/.installed ## report/REPORT.md, report/RUNS.md and the plots from benchmarks/results/
	$(PY) -m report

test: $(VENV)/.installed ## run the whole test suite
	$(PY) -m pytest

lint: $(VENV)/.installed ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis benchmarks/cgen/.build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
