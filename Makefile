# Every target installs what it needs, idempotently: Debian packages when missing,
# then a virtualenv built on Debian's python3 (so the rootless test user can run it).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RUNTIME_PKGS := python3-venv busybox-static uidmap catatonit libseccomp2 slirp4netns libnftables1 iproute2 \
	gcc libc6-dev
TEST_PKGS := $(RUNTIME_PKGS) qemu-system-x86 docker-registry apache2-utils \
	nftables podman runc openssl
BENCH_PKGS := $(RUNTIME_PKGS) crun runc podman buildah iperf3

# the demo's myctr: its own state root, in its own network namespace
M = nsenter --net=build/demo-netns env -u MYCTR_NETWORK $(VENV)/bin/myctr --root build/demo

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

# the init's native stage (runtime/nativeinit.py), loaded with ctypes
NATIVE_INIT := runtime/libmyctrinit.so
$(NATIVE_INIT): runtime/nativeinit.c
	gcc -O2 -shared -fPIC -fno-stack-protector -Wl,-z,now -Wall -Wextra -Werror -o $@.tmp $<
	mv $@.tmp $@

deps:
	$(call apt_ensure,$(RUNTIME_PKGS))
	@$(MAKE) -s $(VENV)/.installed $(NATIVE_INIT)
	@$(PY) -m compileall -q supervisor runtime netplug

test-deps:
	$(call apt_ensure,$(TEST_PKGS))
	@$(MAKE) -s $(VENV)/.installed $(NATIVE_INIT)
	@$(PY) -m compileall -q supervisor runtime netplug

bench-deps:
	$(call apt_ensure,$(BENCH_PKGS))
	@$(MAKE) -s $(VENV)/.installed $(NATIVE_INIT)
	@$(PY) -m compileall -q supervisor runtime netplug

demo: deps
	@echo "--- the demo runs in a network namespace of its own, acting as the host (its bridges"
	@echo "    and nftables rules never touch this machine's interfaces), with state in build/demo"
	-$(VENV)/bin/myctr --root build/demo supervise --stop  # one of an earlier demo
	-umount build/demo-netns 2>/dev/null; mkdir -p build && touch build/demo-netns && unshare --net=build/demo-netns true
	nsenter --net=build/demo-netns ip link set lo up
	@echo "--- an image: busybox:latest from the host's busybox-static (once), a container of it"
	$(M) image inspect busybox >/dev/null 2>&1 || $(M) image bootstrap busybox
	$(M) run --rm --hostname demo busybox /bin/sh -c \
		'echo "pid: $$$$"; echo "hostname: $$(hostname)"; echo "user: $$(id)"; echo "mounts:"; cat /proc/self/mounts'
	@echo "--- a multi-stage Containerfile built (then rebuilt from cache), run, saved"
	$(M) build -t demo-app:1 docs/examples/demo
	$(M) build -t demo-app:1 docs/examples/demo | grep -c "Using cache" | sed 's/^/cached steps on the rebuild: /'
	$(M) run --rm demo-app:1
	$(M) run --rm demo-app:1 everyone
	$(M) images
	$(M) history demo-app:1
	mkdir -p build && $(M) save -o build/demo-app.tar demo-app:1 && ls -l build/demo-app.tar
	@echo "--- a supervised service: restart policy, logs, exec, limits"
	$(M) rm -f demo-svc >/dev/null 2>&1 || true
	$(M) run -d --name demo-svc --restart always --restart-delay 0.2 \
		--memory 64m --cpus 0.5 --pids-limit 50 \
		busybox /bin/sh -c 'echo "started at $$(date +%T)"; sleep 1; exit 1'
	sleep 3
	$(M) ps
	$(M) logs --tail 3 demo-svc
	$(M) exec demo-svc /bin/sh -c 'echo "exec sees: $$(ps | wc -l) lines of ps"' || true
	$(M) stats --no-stream demo-svc || true
	$(M) rm -f demo-svc
	@echo "--- networks: a named network, names and aliases, a published port"
	$(M) network rm app >/dev/null 2>&1 || true
	$(M) network create --subnet 10.90.0.0/24 app
	$(M) run -d --name web --network app --network-alias www -p 8080:80 busybox \
		sh -c 'echo "hello from $$(hostname) on $$(hostname -i)" > /tmp/index.html; exec httpd -f -p 80 -h /tmp'
	$(M) port web
	$(M) run --rm --network app busybox sh -c 'sleep 0.3; wget -qO- http://www/; grep www /etc/hosts'
	nsenter --net=build/demo-netns $(PY) -c 'import urllib.request as u; print("the host, through the published port:", u.urlopen("http://127.0.0.1:8080/").read().decode().strip())'
	$(M) network ls
	$(M) rm -f web && $(M) network rm app
	@echo "--- cgroup limits: a memory hog above --memory 32m is OOM-killed"
	$(M) rm -f demo-hog >/dev/null 2>&1 || true
	$(M) run --name demo-hog --memory 32m --memory-swap 32m busybox \
		/bin/sh -c 'x=$$(head -c 200000000 /dev/zero | tr "\0" a); echo survived' || true
	$(M) ps -a --format json | grep -E '"(name|status_text)"'
	$(M) rm demo-hog
	$(M) supervise --stop
	-umount build/demo-netns; rm -f build/demo-netns

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
	rm -rf $(VENV) build $(NATIVE_INIT)
