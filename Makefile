# Ferry — the one entry point. `make help` lists the targets.

SHELL := /bin/bash
MODULES := proto shared controller agent agent/integration
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X github.com/ferrydeploy/ferry/shared/version.Version=$(VERSION) -X github.com/ferrydeploy/ferry/shared/version.Commit=$(COMMIT)
GO ?= go
TOOLS := $(CURDIR)/.tools/bin
# Pinned tools (installed into .tools/bin by `make tools`): the code
# generators and the linter.
BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GOLANGCI_LINT_VERSION := v2.15.0
GEN_TOOLS := $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
# buf breaking compares proto/ with this commit; empty means the merge-base
# with main or, on main itself, the previous commit (HEAD~1).
BUF_AGAINST ?=
TEST_TIMEOUT ?= 15m

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n\n"} /^[a-zA-Z_-]+:.*##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/ferry-controller, bin/ferry-agent and bin/ferryctl (static, version stamped)
	@mkdir -p bin
	cd controller && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o ../bin/ferry-controller ./cmd/ferry-controller
	cd controller && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o ../bin/ferryctl ./cmd/ferryctl
	cd agent && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o ../bin/ferry-agent ./cmd/ferry-agent

.PHONY: test
test: build ## Run every module's tests with -race (unit, in-process integration, end-to-end), and the fleet tests once more on the etcd store
	@# The integration module drives the built binaries, which the test cache
	@# cannot see: it always runs (-count=1).
	@failed=""; for m in $(MODULES); do echo "== $$m"; count=""; [ "$$m" = agent/integration ] && count=-count=1; \
		(cd $$m && FERRY_BIN=$(CURDIR)/bin $(GO) test -race $$count -timeout $(TEST_TIMEOUT) ./...) || failed="$$failed $$m"; done; \
	echo "== agent/integration/fleettest on the etcd store (FERRY_TEST_STORE=etcd)"; \
	(cd agent/integration && FERRY_BIN=$(CURDIR)/bin FERRY_TEST_STORE=etcd $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./fleettest/) || failed="$$failed fleettest-on-etcd"; \
	if [ -n "$$failed" ]; then echo "FAILED modules:$$failed"; exit 1; fi

.PHONY: e2e
e2e: build ## Run only the end-to-end tests against the built binaries
	cd agent/integration && FERRY_BIN=$(CURDIR)/bin $(GO) test -race -count=1 ./e2e/...

.PHONY: bench
bench: build ## Run the benchmarks (throughput, memory, fleet scale) and print their figures
	@set -e; for m in $(MODULES); do (cd $$m && FERRY_BIN=$(CURDIR)/bin $(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...); done

# The rollout benchmark alone (agent/integration/bench, issue 15): the
# parallel tar -xzf floor, a shell loop over HTTP and a Ferry rollout, for
# local fleets and a capped network (root: network namespaces and tc).
# BENCH_N / BENCH_NETNS_N pick the fleet sizes (0 skips), BENCH_RATE the cap.
BENCH_N ?= 8,16
BENCH_NETNS_N ?= 8
BENCH_RATE ?= 200mbit
.PHONY: bench-rollout
bench-rollout: build ## Time a rollout against the tar -xzf floor and a shell loop (BENCH_N=8,16 BENCH_NETNS_N=8 BENCH_RATE=200mbit)
	cd agent/integration && FERRY_BIN=$(CURDIR)/bin FERRY_BENCH_ROLLOUT_N='$(BENCH_N)' FERRY_BENCH_NETNS_N='$(BENCH_NETNS_N)' FERRY_BENCH_RATE='$(BENCH_RATE)' \
		$(GO) test -run '^$$' -bench '^BenchmarkRollout$$' -benchtime 1x -timeout 30m ./bench/

.PHONY: lint
lint: tools ## golangci-lint (.golangci.yaml) over every module, buf lint, buf breaking
	@failed=""; \
	for m in $(MODULES); do echo "== golangci-lint $$m"; \
		(cd $$m && $(TOOLS)/golangci-lint run --config $(CURDIR)/.golangci.yaml ./...) || failed="$$failed golangci-lint:$$m"; done; \
	echo "== buf lint"; $(TOOLS)/buf lint || failed="$$failed buf-lint"; \
	$(MAKE) --no-print-directory breaking || failed="$$failed buf-breaking"; \
	if [ -n "$$failed" ]; then echo "lint FAILED:$$failed"; exit 1; fi

# Proto messages are also the records the controller and agents store, so a
# breaking change to them is a storage migration: buf breaking (FILE rules,
# buf.yaml) refuses it. A repository without a parent commit (one commit, a
# shallow clone) has nothing to compare with and is skipped.
.PHONY: breaking
breaking: $(TOOLS)/buf ## buf breaking against BUF_AGAINST, default the merge-base with main (HEAD~1 on main)
	@echo "== buf breaking"; base="$(BUF_AGAINST)"; what="BUF_AGAINST=$$base"; \
	if [ -z "$$base" ]; then \
		for b in main origin/main; do base=$$(git merge-base HEAD $$b 2>/dev/null) && what="the merge-base with $$b" && break; done; \
		if [ -z "$$base" ] || [ "$$base" = "$$(git rev-parse HEAD)" ]; then base=$$(git rev-parse -q --verify 'HEAD~1^{commit}') && what="the previous commit (HEAD~1)" || base=""; fi; \
	fi; \
	if [ -z "$$base" ]; then echo "skipped: HEAD has no parent commit to compare proto/ with (a single-commit or shallow clone)"; exit 0; fi; \
	sha=$$(git rev-parse -q --verify "$$base^{commit}") || { echo "BUF_AGAINST=$$base is not a commit in this repository"; exit 1; }; \
	echo "against $$what: $$sha"; \
	$(TOOLS)/buf breaking --against ".git#ref=$$sha" || { \
		echo "proto/ breaks compatibility with $$sha; these messages are also stored records: keep the old fields (reserve removed numbers and names), or ship a migration and list the rule under breaking.ignore_only in buf.yaml with it"; exit 1; }

.PHONY: tools
tools: $(GEN_TOOLS) $(TOOLS)/golangci-lint ## Install the pinned code generators and golangci-lint into .tools/bin

$(TOOLS)/buf:
	GOBIN=$(TOOLS) GOWORK=off $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) GOWORK=off $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) GOWORK=off $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(TOOLS)/golangci-lint:
	GOBIN=$(TOOLS) GOWORK=off $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

.PHONY: generate
generate: $(GEN_TOOLS) ## Regenerate proto/gen from proto/ferry/v1 with the pinned tools
	$(TOOLS)/buf lint
	$(TOOLS)/buf generate

.PHONY: check-generate
check-generate: generate ## Fail if regenerating the code would change it
	@git diff --exit-code -- proto/gen || (echo "proto/gen is out of date: run 'make generate' and commit"; exit 1)
	@test -z "$$(git status --porcelain -- proto/gen)" || (git status --porcelain -- proto/gen; echo "proto/gen has untracked changes: run 'make generate' and commit"; exit 1)

.PHONY: demo
demo: build ## Run the whole story on a local demo fleet (controller + agents on loopback)
	./deployments/demo/demo.sh

# Release bundles (deployments/dist/dist.sh says what is in them). VERSION
# must be a release version here, not git describe's.
PLATFORMS ?= linux/amd64 linux/arm64
.PHONY: dist
dist: ## Release bundles dist/ferry-VERSION-linux-{amd64,arm64}.tar.gz + SHA256SUMS (VERSION=x.y.z [SIGNING_KEY=ed25519 key])
	PLATFORMS='$(PLATFORMS)' SIGNING_KEY='$(SIGNING_KEY)' GO='$(GO)' ./deployments/dist/dist.sh '$(VERSION)' dist

.PHONY: dist-check
dist-check: ## Build the bundles twice (the second with an empty Go build cache) and fail unless the bytes are the same
	./deployments/dist/dist-check.sh '$(VERSION)'

# The controller's container image (deployments/container/Containerfile),
# built offline from the release bundle: FROM scratch stages only, no base
# image to pull, nothing run during the build (build.sh says more). BUNDLE
# picks the bundle (default: dist/ferry-VERSION-linux-ARCH.tar.gz, built
# when missing), ARCH the platform (default this host's).
IMAGE ?= ferry-controller:$(VERSION)
.PHONY: image
image: ## Build the controller's image IMAGE offline from the release bundle with podman, buildah or docker (VERSION=x.y.z [BUNDLE=...] [ARCH=arm64])
	BUNDLE='$(BUNDLE)' ARCH='$(ARCH)' ./deployments/container/build.sh '$(IMAGE)' '$(VERSION)' '$(COMMIT)'

# Not part of `make test`: it builds a bundle and an image (over 30 s).
.PHONY: image-test
image-test: build ## Build the image with podman or buildah and check it (user, volume, files); run it where containers can run
	cd agent/integration && FERRY_BIN=$(CURDIR)/bin FERRY_IMAGE_TEST=1 $(GO) test -count=1 -v -run '^TestContainerImage$$' -timeout 15m ./dist/

.PHONY: clean
clean: ## Remove build outputs, bundles and demo state
	rm -rf bin dist .demo
