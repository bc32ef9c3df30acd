# Runtime Manager. `make help` lists the targets.

SHELL := /bin/bash
GO    ?= go

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
IMAGE   ?= galaxy/rtmanager:$(VERSION)

GOBIN_DIR   := $(or $(shell $(GO) env GOBIN),$(shell $(GO) env GOPATH)/bin)
STATICCHECK := $(or $(shell command -v staticcheck 2>/dev/null),$(GOBIN_DIR)/staticcheck)

# Fuzz targets as package:FuzzName, e.g. FUZZ_TARGETS="./sources:FuzzParseStartJob".
FUZZ_TARGETS ?= .:FuzzValidateGameID .:FuzzParseImageRef .:FuzzValidateStartImage .:FuzzCheckPatch \
	./sources:FuzzJobConsumer_handle ./sources:FuzzInvalidJob \
	./httpapi:FuzzAPI_mutation ./httpapi:FuzzAPI_gameIDPath
FUZZTIME     ?= 60s

.DEFAULT_GOAL := build
.PHONY: help build rtmctl install dev test e2e integration bench soak lint chaos model fuzz image clean k8s-bins

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/rtmanager (static)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/rtmanager ./cmd/manager

rtmctl: ## build bin/rtmctl (static), the operators' client
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/rtmctl ./cmd/rtmctl

install: ## install rtmanager and rtmctl (static, versioned) into GOBIN (go env GOBIN, else GOPATH/bin)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(GOBIN_DIR)/rtmanager ./cmd/manager
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(GOBIN_DIR)/rtmctl ./cmd/rtmctl

bin/rtmanager-linux: FORCE
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o $@ ./cmd/manager

dev: ## run rtmanager locally with throwaway PostgreSQL, Redis and demo engines (hack/dev.sh)
	hack/dev.sh

test: lint k8s-bins ## lint, unit and integration tests with -race (the Kubernetes ones on a control plane make k8s-bins builds), then the e2e suite, then the fault suite
	$(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) e2e
	$(MAKE) chaos

e2e: ## end-to-end suite against the built binary on both runtimes: the real Docker daemon, then e2e-k8s
	$(GO) test -race -count=1 -v -tags integration -timeout 15m -skip '^TestCluster_' ./test/e2e/...
	$(MAKE) e2e-k8s

.PHONY: e2e-k8s
e2e-k8s: k8s-bins ## the same end-to-end suite on the Kubernetes runtime (a real control plane, three kwok nodes)
	RTM_E2E_RUNTIME=kubernetes RTM_K8S_BINS=$(K8S_BINS) $(GO) test -race -count=1 -v -tags integration -timeout 15m -skip '^TestProductionShape_' ./test/e2e/...

integration: e2e ## alias of e2e (the runbook's name)

# Where make k8s-bins puts the control plane binaries; test/k8senv reads RTM_K8S_BINS, else bin/k8s.
K8S_BINS ?= $(CURDIR)/bin/k8s

k8s-bins: ## build kube-apiserver, kube-scheduler, kube-controller-manager, etcd and kwok into K8S_BINS (module proxy; seconds when built)
	hack/k8s/build.sh $(K8S_BINS)

bench: ## benchmark against Docker's own cost and at scale; prints pass/miss per target, writes docs/benchmarks.md
	$(GO) run ./test/bench

.PHONY: bench-k8s
bench-k8s: k8s-bins ## the Kubernetes runtime on 100 kwok nodes (1,000 and 10,000 games) against the bare client; writes its section of docs/benchmarks.md (BENCH_K8S_FLAGS=-quick to try it)
	RTM_K8S_BINS=$(K8S_BINS) $(GO) run ./test/benchk8s $(BENCH_K8S_FLAGS)

soak: ## 200 engines probed every second for 10 minutes under traffic; writes docs/soak.md
	$(GO) run ./test/soak

# vet and staticcheck read the export data of every dependency, which the go command compiles for
# them; with -race they read the race build's, which `make test` compiles anyway. Without it, a
# fresh machine compiled the ~1,200 packages (client-go's clientset and informers, which
# controller-runtime's manager imports, are most of them) twice.
lint: ## gofmt, go vet, staticcheck (also over the integration/chaos-tagged suites)
	@unformatted=$$(gofmt -l .); if [[ -n $$unformatted ]]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet -race ./...
	$(GO) vet -race -tags integration,chaos ./test/...
	@[[ -x "$(STATICCHECK)" ]] || $(GO) install honnef.co/go/tools/cmd/staticcheck@latest
	GOFLAGS="$(GOFLAGS) -race" $(STATICCHECK) ./...
	GOFLAGS="$(GOFLAGS) -race" $(STATICCHECK) -tags integration,chaos ./test/...

chaos: ## fault-injection suite (Docker/PostgreSQL/Redis outages and cut-offs); prints each fault's report line
	$(GO) test -count=1 -tags chaos -timeout 20m -v ./test/chaos/...

# Schedules of the randomized model test for make model (go test ./... runs its default, a few
# hundred); SEED=N replays one schedule.
SCHEDULES ?= 2000

model: ## randomized model test: SCHEDULES schedules (default 2000) of jobs, REST, Docker faults, lease loss, restarts; SEED=N replays one
	RTM_MODEL_SCHEDULES=$(SCHEDULES) $(GO) test -count=1 -timeout 120m -v -run '^TestModel$$' ./test/model/ $(if $(SEED),-seed=$(SEED))

fuzz: ## run each FUZZ_TARGETS entry (package:FuzzName) for FUZZTIME
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name in $$pkg"; \
		$(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZTIME) "$$pkg"; \
	done

image: bin/rtmanager-linux ## build the $(IMAGE) container image (FROM scratch)
	docker build -t $(IMAGE) -f Dockerfile .

clean: ## remove build and coverage output
	rm -rf bin/ coverage.out coverage.html cover.out *.coverprofile

FORCE:
