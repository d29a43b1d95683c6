# jobwire: `make run` and `make test` are all a fresh machine needs (Node 20 + Debian).
SHELL := /bin/bash
.DEFAULT_GOAL := help
NODE_BIN := node_modules/.bin

# Debian packages the tests need, installed only when missing.
APT_PACKAGES_TEST := redis-server python3-redis python3-celery

.PHONY: help install deps build native typecheck run test test-unit bench bench-quick bench-profile chaos soak prop screenshots clean

help:
	@echo "make run          install, build and start the gateway, open to this machine (--open; embedded broker;"
	@echo "                  REDIS_URL=redis://... for Redis, REDIS_CLUSTER=host:port,... for a Redis Cluster)"
	@echo "make test         install what is missing, build, typecheck and run every test"
	@echo "make bench        full benchmark against the baseline (writes bench/results/)"
	@echo "make bench-quick  the same at small size, under a minute"
	@echo "make chaos        faults (Redis restarts and pauses, killed workers, node restart, slow and hostile peers) under load"
	@echo "make soak         memory growth under steady load for SOAK_MINUTES (default 10)"
	@echo "make prop         the state model's property test on new random interleavings (PROP_ROUNDS, default 5)"
	@echo "make clean        remove build output"

# npm ci when node_modules is missing or older than the lock file.
node_modules/.install-stamp: package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

install: node_modules/.install-stamp

# Debian packages, only those missing; needs root (or sudo) the first time.
deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v cc >/dev/null || missing="$$missing gcc libc6-dev"; \
	/usr/bin/python3 -c 'import redis' 2>/dev/null || missing="$$missing python3-redis"; \
	/usr/bin/python3 -c 'import celery' 2>/dev/null || missing="$$missing python3-celery"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	/usr/bin/python3 -c 'import fastapi' 2>/dev/null || missing="$$missing python3-fastapi"; \
	/usr/bin/python3 -c 'import uvicorn' 2>/dev/null || missing="$$missing python3-uvicorn"; \
	[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing="$$missing nginx"; \
	[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Rebuilt only when a source changed, so that make bench-quick and make run start at once.
BUILD_INPUTS := $(shell find src bench -name '*.ts' 2>/dev/null) tsconfig.json src/client/tsconfig.json package-lock.json

build: dist/.build-stamp

dist/.build-stamp: $(BUILD_INPUTS) node_modules/.install-stamp
	$(NODE_BIN)/tsc -p tsconfig.json
	@chmod +x dist/src/cli.js
	$(NODE_BIN)/tsc -p src/client/tsconfig.json
	$(NODE_BIN)/esbuild src/client/index.ts --bundle --format=esm --minify --target=es2020 --sourcemap --log-level=warning --outfile=dist/client/jobwire-client.js
	@# Compressed once here, so the gateway never compresses per request (http/static.ts).
	@node -e "const z=require('zlib'),f=require('fs'),p='dist/client/jobwire-client.js',b=f.readFileSync(p);f.writeFileSync(p+'.gz',z.gzipSync(b,{level:9}));f.writeFileSync(p+'.br',z.brotliCompressSync(b,{params:{[z.constants.BROTLI_PARAM_QUALITY]:11}}))"
	$(NODE_BIN)/esbuild src/client/react.ts --bundle --format=esm --target=es2020 --external:react --log-level=warning --outfile=dist/client/jobwire-react.js
	$(NODE_BIN)/esbuild src/client/vue.ts --bundle --format=esm --target=es2020 --external:vue --log-level=warning --outfile=dist/client/jobwire-vue.js
	@touch $@

typecheck: install
	$(NODE_BIN)/tsc -p tsconfig.json --noEmit
	$(NODE_BIN)/tsc -p src/client/tsconfig.json --noEmit
	$(NODE_BIN)/tsc -p test/tsconfig.json --noEmit

# --open: without a token verification key the gateway refuses to start unless told to run
# open; it then says at startup, in a WARN line, that it is open and to whom (anyone who can
# connect to 127.0.0.1, and pages from its own and loopback origins only). With a key
# (JOBWIRE_JWT_SECRET=... make run) --open has no effect and tokens are required.
run: build
	MALLOC_ARENA_MAX=$${MALLOC_ARENA_MAX:-1} node --max-semi-space-size=4 dist/src/cli.js serve --demo --open $(ARGS)

test: deps build native typecheck
	$(NODE_BIN)/tap

test-unit: install
	$(NODE_BIN)/tap test/unit-*.ts

# The bench's load generator and publisher are small C programs (cc from Debian's gcc).
NATIVE := dist/bench/native/loadgen dist/bench/native/publisher dist/bench/native/floor
dist/bench/native/%: bench/native/%.c bench/native/common.h
	@mkdir -p $(@D)
	cc -O2 -Wall -Wextra -o $@ $<

native: $(NATIVE)

# Benchmarks start their own redis-server, gateways and baseline, and stop them all.
bench: deps build native
	node dist/bench/run.js --size full

bench-quick: deps build native
	node dist/bench/run.js --size quick

bench-profile: deps build native
	node dist/bench/run.js --size quick --profile

# Faults against a running deployment (own Redis, two gateway nodes, 5,000 sockets): every
# view must end on its job's stored state. Bounded to 8 minutes; CHAOS_SCALE=0.1 for a dry run.
chaos: deps build
	node dist/bench/chaos.js

# Steady load for SOAK_MINUTES (default 10); fails when gateway memory keeps growing.
soak: deps build
	SOAK_MINUTES=$${SOAK_MINUTES:-10} node dist/bench/soak.js

# Pictures of both pages for the README, taken by the browser tests.
# The state model's property test on new random interleavings (make test runs a fixed set),
# PROP_ROUNDS times; a failure prints the seed and path that replay it.
PROP_ROUNDS ?= 5
prop: deps build
	for i in $$(seq $(PROP_ROUNDS)); do JOBWIRE_PROP_SEED=random $(NODE_BIN)/tap test/state-model-property.ts || exit 1; done

screenshots: deps build
	JOBWIRE_SCREENSHOTS=1 $(NODE_BIN)/tap test/e2e-browser.ts

clean:
	rm -rf dist .tap
