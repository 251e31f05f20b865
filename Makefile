# gputel — one target per chore; CI (.ci/run) calls these same targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=

.PHONY: install provision proto lint fmt test cover cover-html cover-pkg run bench clean

install: ## create .venv and install the project (editable) with test extras
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# Byte-compile the project once: where PYTHONDONTWRITEBYTECODE is set, every process start
	@# would compile it again (~0.1 s of CPU per streamer, collector or broker on 2 cores).
	$(PY) -m compileall -q walbroker streamer collector gateway proto store gputel > /dev/null

proto: ## regenerate proto/gen from proto/*.proto
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHON=$(PY) scripts/gen_proto.sh

lint: ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy walbroker streamer collector gateway store proto gputel

fmt:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

provision: ## what the tests need besides .venv (InfluxDB, helm, kubectl, promtool, chromium, Kafka jars); cached, idempotent
	PYTHON=$(PY) scripts/provision-tests.sh

test: provision ## the whole suite (unit + integration against real processes)
	$(BIN)/pytest -q $(PYTEST_ARGS)

# combine --append: pytest-cov has already combined the data of every process that ended before it;
# one that ends later (a daemon stopped at teardown) leaves its own file, and a plain combine would
# replace the whole result with that one file (the suite then reported 0 %).
cover: provision ## the suite with coverage (also of subprocesses), summary; fails under 85 %
	rm -f .coverage .coverage.*
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(BIN)/pytest -q --cov --cov-report= $(PYTEST_ARGS)
	$(BIN)/coverage combine --append -q || true
	$(BIN)/coverage report --fail-under=85

cover-html: cover ## HTML coverage report in htmlcov/ (and coverage.html)
	$(BIN)/coverage html -q -d htmlcov
	ln -sf htmlcov/index.html coverage.html

cover-pkg: ## per-package coverage summary (run make cover first)
	@for p in walbroker streamer collector gateway store proto; do \
	  printf '%-10s ' $$p; $(BIN)/coverage report --include="$$p/*" 2>/dev/null | tail -1 | awk '{print $$NF}'; done

run: ## the whole pipeline locally (broker, collector, gateway, streamer) until Ctrl-C
	$(BIN)/gputel-up $(RUN_ARGS)

bench: ## benchmarks (not tests): writes bench/results/latest.json
	$(PY) -m bench.run --out bench/results/latest.json $(BENCH)

clean:
	rm -rf build *.egg-info .coverage .coverage.* htmlcov coverage.html .pytest_cache .mypy_cache .ruff_cache

# --- containers and Kubernetes ---------------------------------------------------------------
# One image holds every component (the container command picks it). Per-component targets build
# the same image and add a per-component tag, as the reference's targets did.
# Verified offline by `make chart-test`; the targets below that need Docker, KIND or a cluster
# are a manual step (docs/kubernetes.md).
DOCKER ?= docker
KIND ?= kind
KUBECTL ?= kubectl
HELM ?= helm
PLATFORM ?=
IMAGE_REPO ?= gputel
IMAGE_TAG ?= 0.1.0
IMAGE := $(IMAGE_REPO):$(IMAGE_TAG)
COMPONENTS := broker streamer collector gateway
KIND_CLUSTER ?= gputel
NAMESPACE ?= gpu-telemetry
RELEASE ?= gputel
MON_NAMESPACE ?= monitoring
MON_RELEASE ?= kube-prometheus-stack
ENABLE_INFLUXDB ?=
INFLUX_URL ?=
INFLUX_SECRET ?=
INFLUX_TOKEN ?=
INFLUX_PASSWORD ?=
INFLUX_USER ?= admin
INFLUX_ORG ?= ai_cluster
INFLUX_BUCKET ?= telemetry
HELM_ARGS ?=
CHART_FULLNAME := $(if $(findstring gputel,$(RELEASE)),$(RELEASE),$(RELEASE)-gputel)
PLATFORM_FLAG := $(if $(PLATFORM),--platform $(PLATFORM))

# INFLUX_PASSWORD and INFLUX_TOKEN never reach a command line (make echoes recipes; every argv is
# readable in /proc): helm-install writes them from the environment into a Secret (kubectl reads
# the files of a private temporary directory) and passes only the Secret's name to helm. Export
# them rather than giving them as make arguments, e.g. `read -rs INFLUX_TOKEN; export INFLUX_TOKEN`.
export INFLUX_PASSWORD INFLUX_TOKEN
# ENABLE_INFLUXDB=1 with INFLUX_PASSWORD and/or INFLUX_TOKEN: the subchart's admin Secret (keys
# admin-password and admin-token; the one not given is generated). External InfluxDB with
# INFLUX_TOKEN and no INFLUX_SECRET: a Secret with key token.
INFLUX_ADMIN_SECRET := $(CHART_FULLNAME)-influxdb2-admin
INFLUX_TOKEN_SECRET := $(CHART_FULLNAME)-influx-credentials
ifeq ($(ENABLE_INFLUXDB),1)
INFLUX_MAKE_SECRET := $(if $(INFLUX_PASSWORD)$(INFLUX_TOKEN),admin)
HELM_INFLUX_ARGS := --set influxdb2.enabled=true \
  --set-string influx.org=$(INFLUX_ORG),influxdb2.adminUser.organization=$(INFLUX_ORG) \
  --set-string influx.bucket=$(INFLUX_BUCKET),influxdb2.adminUser.bucket=$(INFLUX_BUCKET) \
  --set-string influxdb2.adminUser.user=$(INFLUX_USER) \
  $(if $(INFLUX_MAKE_SECRET),--set-string influxdb2.adminUser.existingSecret=$(INFLUX_ADMIN_SECRET))
else
INFLUX_MAKE_SECRET := $(if $(INFLUX_SECRET),,$(if $(INFLUX_TOKEN),token))
HELM_INFLUX_ARGS := --set influxdb2.enabled=false --set-string influx.url=$(INFLUX_URL) \
  --set-string influx.org=$(INFLUX_ORG),influx.bucket=$(INFLUX_BUCKET) \
  $(if $(INFLUX_SECRET),--set-string influx.auth.existingSecret=$(INFLUX_SECRET)) \
  $(if $(INFLUX_MAKE_SECRET),--set-string influx.auth.existingSecret=$(INFLUX_TOKEN_SECRET))
endif

.PHONY: docker-build $(addprefix docker-build-,$(COMPONENTS)) docker-smoke kind-up kind-delete \
  kind-load $(addprefix kind-load-,$(COMPONENTS)) kind-deploy helm-deps helm-install \
  helm-install-monitoring helm-uninstall port-forward port-forward-grafana chart-test

docker-build: ## build the image (all components) as $(IMAGE); PLATFORM=linux/arm64 honoured
	$(DOCKER) build $(PLATFORM_FLAG) -t $(IMAGE) .

$(addprefix docker-build-,$(COMPONENTS)): docker-build-%: docker-build ## the same image, also tagged $(IMAGE_REPO)-<component>:$(IMAGE_TAG)
	$(DOCKER) tag $(IMAGE) $(IMAGE_REPO)-$*:$(IMAGE_TAG)

docker-smoke: docker-build ## optional: --help of every component and the broker's gRPC health check, in the image
	for cmd in walbroker gputel-streamer gputel-collector gputel-gateway; do \
	  $(DOCKER) run --rm --network host $(IMAGE) $$cmd --help >/dev/null || exit 1; done
	cid=$$($(DOCKER) run -d --network host $(IMAGE) walbroker serve --data-dir /tmp/wb \
	  --listen 127.0.0.1:17070 --metrics-listen 127.0.0.1:19101); \
	trap '$(DOCKER) rm -f '$$cid' >/dev/null' EXIT; sleep 3; \
	$(DOCKER) run --rm --network host $(IMAGE) python -c "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
	r = g.HealthStub(grpc.insecure_channel('127.0.0.1:17070')).Check(h.HealthCheckRequest(), timeout=5); \
	assert r.status == h.HealthCheckResponse.SERVING, r; print('broker health: SERVING')"

kind-up: ## create the KIND cluster $(KIND_CLUSTER) unless it exists
	$(KIND) get clusters | grep -qx '$(KIND_CLUSTER)' || $(KIND) create cluster --name $(KIND_CLUSTER) --wait 120s

kind-delete:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

kind-load: ## load $(IMAGE) into the KIND cluster
	$(KIND) load docker-image $(IMAGE) --name $(KIND_CLUSTER)

$(addprefix kind-load-,$(COMPONENTS)): kind-load-%: ## load the per-component tag into the KIND cluster
	$(KIND) load docker-image $(IMAGE_REPO)-$*:$(IMAGE_TAG) --name $(KIND_CLUSTER)

kind-deploy: kind-up docker-build kind-load helm-install-monitoring helm-install ## one shot: cluster, image, monitoring, chart

helm-deps: ## fetch the influxdb2 subchart into chart/charts (helm refuses to render without it)
	$(HELM) repo add influxdata https://helm.influxdata.com/ --force-update >/dev/null
	$(HELM) dependency build chart

helm-install: helm-deps ## install/upgrade the chart; ENABLE_INFLUXDB=1 or INFLUX_URL=... with INFLUX_SECRET (or INFLUX_TOKEN exported)
ifneq ($(INFLUX_MAKE_SECRET),)
	$(KUBECTL) create namespace $(NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	@set -e; umask 077; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	gen() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'; }; \
	if [ "$(INFLUX_MAKE_SECRET)" = admin ]; then \
	  printf '%s' "$${INFLUX_PASSWORD:-$$(gen)}" > "$$dir/admin-password"; \
	  printf '%s' "$${INFLUX_TOKEN:-$$(gen)}" > "$$dir/admin-token"; \
	  name=$(INFLUX_ADMIN_SECRET); \
	else \
	  printf '%s' "$$INFLUX_TOKEN" > "$$dir/token"; name=$(INFLUX_TOKEN_SECRET); \
	fi; \
	echo "Secret $$name (from INFLUX_PASSWORD/INFLUX_TOKEN in the environment)"; \
	$(KUBECTL) -n $(NAMESPACE) create secret generic "$$name" --from-file="$$dir" \
	  --dry-run=client -o yaml | $(KUBECTL) apply -f -
endif
	$(HELM) upgrade --install $(RELEASE) chart -n $(NAMESPACE) --create-namespace --wait --timeout 10m \
	  --set-string image.repository=$(IMAGE_REPO),image.tag=$(IMAGE_TAG) \
	  $(HELM_INFLUX_ARGS) $(HELM_ARGS)

helm-install-monitoring: ## kube-prometheus-stack in $(MON_NAMESPACE), selecting every ServiceMonitor, rule and dashboard
	$(HELM) repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
	$(HELM) upgrade --install $(MON_RELEASE) prometheus-community/kube-prometheus-stack \
	  -n $(MON_NAMESPACE) --create-namespace --wait --timeout 15m \
	  --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
	  --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false \
	  --set grafana.sidecar.dashboards.searchNamespace=ALL

helm-uninstall: ## remove the release (the broker's PVC stays; delete it by hand to drop the log)
	$(HELM) uninstall $(RELEASE) -n $(NAMESPACE)

port-forward: ## gateway on https://localhost:8080 (the chart serves TLS by default; http with tls.enabled=false)
	$(KUBECTL) -n $(NAMESPACE) port-forward svc/$(CHART_FULLNAME)-gateway 8080:8080

port-forward-grafana: ## Grafana on http://localhost:8484
	$(KUBECTL) -n $(MON_NAMESPACE) port-forward svc/$(MON_RELEASE)-grafana 8484:80

chart-test: ## offline chart, rules, dashboard and Dockerfile tests (installs helm/promtool first)
	PYTHON=$(PY) scripts/install-tools.sh
	$(BIN)/pytest -q tests/chart $(PYTEST_ARGS)
# --- the image and the chart on real machinery (CI runs both after make test) ----------------
# make image: Debian's docker engine (started without bridge or iptables), a local base image
# (debootstrap minbase + python3.11, cached) unless IMAGE_BASE=default keeps python:3.11-slim.
# make kube-test: etcd, kube-apiserver, controller-manager, scheduler and kwok on 127.0.0.1,
# built once from Go modules into ~/.cache/gputel (docs/kubernetes.md, "How the project tests
# the chart on a real API server").
IMAGE_BASE ?= local
KUBE_RUN ?= $(HOME)/.cache/gputel/kube-run
.PHONY: image image-test kube-build kube-up kube-down kube-test

image: ## build $(IMAGE) with a local Docker engine; prints its size and the build time
	IMAGE=$(IMAGE) BASE=$(IMAGE_BASE) PYTHON=$(PY) scripts/image.sh build

image-test: image ## run broker, collector, gateway and a streamer as hardened containers; points must arrive
	GPUTEL_IMAGE=$(IMAGE) $(BIN)/pytest -q -p no:cacheprovider tests/image $(PYTEST_ARGS)

kube-build: ## build (or reuse) the control-plane binaries (~10 min cold on 2 cores)
	scripts/kube-local.sh build

kube-up: kube-build ## a local control plane; then: export KUBECONFIG=$(KUBE_RUN)/admin.kubeconfig
	PYTHON=$(PY) scripts/install-tools.sh
	scripts/kube-local.sh up $(KUBE_RUN)

kube-down: ## stop what kube-up started
	scripts/kube-local.sh down $(KUBE_RUN)

kube-test: kube-build ## install, upgrade, roll back and uninstall the chart on a real API server
	PYTHON=$(PY) scripts/install-tools.sh
	$(BIN)/pytest -q -p no:cacheprovider tests/kube $(PYTEST_ARGS)
# --- end of containers and Kubernetes ---------------------------------------------------------

# --- gateway: OpenAPI document and Swagger UI ------------------------------------------------
.PHONY: openapi-gen openapi-check swagger-static

openapi-gen: ## write gateway/openapi.json, generated from the gateway's routes and schemas
	$(PY) -m gateway.openapi --out gateway/openapi.json

openapi-check: ## fail when gateway/openapi.json is stale (tests/gateway also checks it)
	$(PY) -m gateway.openapi --out gateway/openapi.json --check

swagger-static: ## no-op: Swagger UI is served at /swagger/ from the swagger-ui-bundle-v2 package's bundled files (offline, no CDN)
	@$(PY) -c "import swagger_ui_bundle as s; print('Swagger UI assets:', s.swagger_ui_path)"
# --- end of gateway ---------------------------------------------------------------------------
