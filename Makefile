# Every target installs what it needs, idempotently: Debian packages when missing,
# then a virtualenv built on Debian's python3 (so the rootless test user can run it).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_PKGS := python3-venv busybox-static uidmap catatonit libseccomp2
TEST_PKGS := $(RUNTIME_PKGS) gcc libc6-dev qemu-system-x86 docker-registry apache2-utils
BENCH_PKGS := $(RUNTIME_PKGS) crun runc podman buildah iperf3 slirp4netns

.PHONY: deps test-deps bench-deps demo test unit integration lint bench clean

define apt_ensure
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

$(VENV)/.installed: pyproject.toml
	/usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

deps:
	$(call apt_ensure,$(RUNTIME_PKGS))
	@$(MAKE) -s $(VENV)/.installed
	@$(PY) -m compileall -q supervisor runtime netplug

test-deps:
	$(call apt_ensure,$(TEST_PKGS))
	@$(MAKE) -s $(VENV)/.installed
	@$(PY) -m compileall -q supervisor runtime netplug

bench-deps:
	$(call apt_ensure,$(BENCH_PKGS))
	@$(MAKE) -s $(VENV)/.installed
	@$(PY) -m compileall -q supervisor runtime netplug

demo: deps
	@echo "--- an image: busybox:latest from the host's busybox-static (once), a container of it"
	$(VENV)/bin/myctr image inspect busybox >/dev/null 2>&1 || $(VENV)/bin/myctr image bootstrap busybox
	$(VENV)/bin/myctr run --rm --hostname demo busybox /bin/sh -c \
		'echo "pid: $$$$"; echo "hostname: $$(hostname)"; echo "user: $$(id)"; echo "mounts:"; cat /proc/self/mounts'
	@echo "--- a multi-stage Containerfile built (then rebuilt from cache), run, saved"
	$(VENV)/bin/myctr build -t demo-app:1 docs/examples/demo
	$(VENV)/bin/myctr build -t demo-app:1 docs/examples/demo | grep -c "Using cache" | sed 's/^/cached steps on the rebuild: /'
	$(VENV)/bin/myctr run --rm demo-app:1
	$(VENV)/bin/myctr run --rm demo-app:1 everyone
	$(VENV)/bin/myctr images
	$(VENV)/bin/myctr history demo-app:1
	mkdir -p build && $(VENV)/bin/myctr save -o build/demo-app.tar demo-app:1 && ls -l build/demo-app.tar
	@echo "--- a supervised service: restart policy, logs, exec, limits"
	$(VENV)/bin/myctr rm -f demo-svc >/dev/null 2>&1 || true
	$(VENV)/bin/myctr run -d --name demo-svc --restart always --restart-delay 0.2 \
		--memory 64m --cpus 0.5 --pids-limit 50 \
		busybox /bin/sh -c 'echo "started at $$(date +%T)"; sleep 1; exit 1'
	sleep 3
	$(VENV)/bin/myctr ps
	$(VENV)/bin/myctr logs --tail 3 demo-svc
	$(VENV)/bin/myctr exec demo-svc /bin/sh -c 'echo "exec sees: $$(ps | wc -l) lines of ps"' || true
	$(VENV)/bin/myctr stats --no-stream demo-svc || true
	$(VENV)/bin/myctr rm -f demo-svc
	@echo "--- cgroup limits: a memory hog above --memory 32m is OOM-killed"
	$(VENV)/bin/myctr rm -f demo-hog >/dev/null 2>&1 || true
	$(VENV)/bin/myctr run --name demo-hog --memory 32m --memory-swap 32m busybox \
		/bin/sh -c 'x=$$(head -c 200000000 /dev/zero | tr "\0" a); echo survived' || true
	$(VENV)/bin/myctr ps -a --format json | grep -E '"(name|status_text)"'
	$(VENV)/bin/myctr rm demo-hog

test: test-deps lint
	$(PY) -m pytest -q tests

unit: test-deps
	$(PY) -m pytest -q tests/unit

integration: test-deps
	$(PY) -m pytest -q tests/integration

lint: test-deps
	$(VENV)/bin/ruff check supervisor runtime netplug tests bench
	$(VENV)/bin/mypy

bench: bench-deps
	$(PY) -m bench.start_latency
	$(PY) -m bench.supervisor_bench
	$(PY) -m bench.cgroup_bench
	$(PY) -m bench.image_bench
	$(PY) -m bench.net_bench

clean:
	rm -rf $(VENV) build
