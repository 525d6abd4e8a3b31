# Ambit's build. `make demo` and `make test` set up everything they need themselves: Debian
# packages, the pinned test binaries (built from the Go module proxy into .cache/bin) and the
# images. Versions are pinned here and in tests/tools/*/go.mod.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

CACHE   ?= $(CURDIR)/.cache
BIN     := $(CACHE)/bin
IMAGES  := $(CACHE)/images
GO      ?= go

# One build configuration for everything but the race detector: static and with trimmed paths,
# which the images and the node binaries need anyway. vet, the fuzz and end-to-end test binaries
# and the images then share one compiled dependency graph, so a cold `make test` compiles
# client-go and the rest once for them all, and once more with -race for the unit tests.
# grpcnotrace leaves out grpc-go's request tracing (golang.org/x/net/trace), which is off unless
# grpc.EnableTracing is set and which Ambit never sets. It imports html/template, whose use of
# reflect's method lookup makes the linker keep every exported method of every type: without it
# ztunnel's binary is 2.3 MB (16%) smaller. Build by hand with `go build -tags grpcnotrace`.
export CGO_ENABLED := 0
export GOFLAGS     := -trimpath -tags=grpcnotrace $(GOFLAGS)
RACE_TEST          := CGO_ENABLED=1 $(GO) test -race

# Each build and test phase prints when it starts, so a CI log shows where a cold run's time goes.
PHASE := @echo == $$(date -u +%T)

# Pinned versions of what the test cluster runs. Kubernetes and etcd are pinned in
# tests/tools/k8s/go.mod, containerd in tests/tools/containerd/go.mod.
K8S_VERSION         := v1.34.4
RUNC_VERSION        := v1.3.6
CNI_PLUGINS_VERSION := v1.9.1

# Debian packages: runc's seccomp build, the programs the harness and the nodes run, protoc and
# clang/llvm-strip for make generate (api/ protobufs, bpf/ objects), and the C peer and the
# throughput tool the data-path benchmark puts in images (nginx with its stream module, iperf3).
APT_PACKAGES := gcc libc6-dev libseccomp-dev pkg-config iptables nftables util-linux mount iproute2 \
	protobuf-compiler libprotobuf-dev clang llvm nginx libnginx-mod-stream iperf3

K8S_LDFLAGS := -s -w \
	-X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=34 \
	-X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/client-go/pkg/version.gitMajor=1 \
	-X k8s.io/client-go/pkg/version.gitMinor=34

.PHONY: build test e2e unit bench bench-images demo generate check-generate lint images tools deps clean help

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

build: ## compile every package
	$(GO) build ./...

deps: ## install the Debian packages the build and the test cluster need
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Each build leaves a stamp named after what it was built from, so a binary is rebuilt only
# when its pinned version (or the tools module's go.sum) changes.
sum = $(shell cat $(1) | sha256sum | cut -c1-12)
K8S_STAMP        := $(BIN)/.k8s-$(K8S_VERSION)-$(call sum,tests/tools/k8s/go.sum tests/tools/k8s/etcd/main.go)
CONTAINERD_STAMP := $(BIN)/.containerd-$(call sum,tests/tools/containerd/go.sum)
RUNC_STAMP       := $(BIN)/.runc-$(RUNC_VERSION)
CNI_STAMP        := $(BIN)/.cni-$(CNI_PLUGINS_VERSION)

tools: deps $(K8S_STAMP) $(CONTAINERD_STAMP) $(RUNC_STAMP) $(CNI_STAMP) ## build the pinned test binaries

$(K8S_STAMP):
	@mkdir -p $(BIN)
	$(PHASE) building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl $(K8S_VERSION) and etcd
	cd tests/tools/k8s && $(GO) build -ldflags '$(K8S_LDFLAGS)' -o $(BIN)/ \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl ./etcd
	@rm -f $(BIN)/.k8s-* && touch $@

$(CONTAINERD_STAMP):
	@mkdir -p $(BIN)
	$(PHASE) building containerd, containerd-shim-runc-v2 and ctr
	cd tests/tools/containerd && $(GO) build -ldflags '-s -w' -o $(BIN)/ \
		github.com/containerd/containerd/v2/cmd/containerd \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
		github.com/containerd/containerd/v2/cmd/ctr
	@rm -f $(BIN)/.containerd-* && touch $@

$(RUNC_STAMP): | deps
	@mkdir -p $(BIN)
	$(PHASE) building runc $(RUNC_VERSION)
	GOBIN=$(BIN) CGO_ENABLED=1 $(GO) install -tags seccomp -ldflags '-s -w' github.com/opencontainers/runc@$(RUNC_VERSION)
	@rm -f $(BIN)/.runc-* && touch $@

$(CNI_STAMP):
	@mkdir -p $(BIN)/cni
	$(PHASE) building CNI plugins $(CNI_PLUGINS_VERSION)
	GOBIN=$(BIN)/cni $(GO) install -ldflags '-s -w' \
		github.com/containernetworking/plugins/plugins/main/bridge@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/ipam/host-local@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/main/loopback@$(CNI_PLUGINS_VERSION) \
		github.com/containernetworking/plugins/plugins/meta/portmap@$(CNI_PLUGINS_VERSION)
	@rm -f $(BIN)/.cni-* && touch $@

# Protobuf code generation for api/. protoc comes from Debian (libprotobuf-dev holds the
# well-known .proto files it imports); the Go plugins are pinned and built into $(BIN)/proto.
# Generated code is committed, so building Ambit needs none of this.
PROTOC_VERSION             := 3.21.12
PROTOC_GEN_GO_VERSION      := v1.36.10
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
PROTOC_GEN_GO_STAMP        := $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
PROTOC_GEN_GO_GRPC_STAMP   := $(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)

$(PROTOC_GEN_GO_STAMP):
	@mkdir -p $(BIN)/proto
	GOBIN=$(BIN)/proto $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@rm -f $(BIN)/.protoc-gen-go-v* && touch $@

$(PROTOC_GEN_GO_GRPC_STAMP):
	@mkdir -p $(BIN)/proto
	GOBIN=$(BIN)/proto $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@rm -f $(BIN)/.protoc-gen-go-grpc-v* && touch $@


generate: deps $(PROTOC_GEN_GO_STAMP) $(PROTOC_GEN_GO_GRPC_STAMP) ## regenerate api/ (protobufs), bpf/ (eBPF objects) and the CRDs
	$(PHASE) make generate
	@have=$$(protoc --version); if [ "$$have" != "libprotoc $(PROTOC_VERSION)" ]; then \
		echo "protoc: found \"$$have\", want libprotoc $(PROTOC_VERSION) (Debian bookworm protobuf-compiler)"; exit 1; fi
	find api -name '*.pb.go' -delete
	cd api && PATH="$(BIN)/proto:$$PATH" protoc --proto_path=. \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		$$(find . -name '*.proto' -printf '%P\n' | LC_ALL=C sort)

	@# The eBPF programs and their Go bindings (bpf2go is pinned in go.mod's tool block).
	$(GO) generate ./bpf/...

	@# The CRDs come from module folders: `go list -m` names a module's folder only once it is
	@# in the module cache, which on a fresh machine nothing has put it in yet.
	$(GO) mod download istio.io/api sigs.k8s.io/gateway-api
	@# The Istio CRDs, from the istio.io/api version pinned in go.mod.
	cp "$$($(GO) list -m -f '{{.Dir}}' istio.io/api)/kubernetes/customresourcedefinitions.gen.yaml" \
		deploy/charts/base/files/crd-all.gen.yaml
	chmod 644 deploy/charts/base/files/crd-all.gen.yaml
	@# The Gateway API CRDs (standard channel, without its admission policy), from the
	@# sigs.k8s.io/gateway-api version pinned in go.mod.
	d="$$($(GO) list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)/config/crd/standard"; \
	for f in $$(ls "$$d"/gateway.networking.k8s.io_*.yaml | grep -v _vap_ | LC_ALL=C sort); do \
		echo "---"; cat "$$f"; done > deploy/charts/gateway-api/files/standard-crds.gen.yaml

check-generate: generate ## fail if the committed generated files are not what make generate produces
	@out=$$(git status --porcelain api/ bpf/ deploy/charts/base/files/ deploy/charts/gateway-api/files/); if [ -n "$$out" ]; then \
		echo "generated files differ from the committed tree after make generate: run make generate and commit the result"; \
		echo "$$out"; exit 1; fi

# Images of Ambit's binaries and test apps, built without a Docker engine: a static Go binary
# on an empty base, written as an archive that each test node's containerd imports.
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# name:pkg[+pkg...]: each package's binary goes to /usr/local/bin/<its folder name>; the first
# is the entrypoint (cni-agent carries the ambit-cni plugin, which it copies onto the node).
IMAGE_APPS  := pause:tests/apps/pause echo:tests/apps/echo istiod-lite:istiod-lite ztunnel:ztunnel \
	cni-agent:cni/cmd/cni-agent+cni/cmd/ambit-cni
BUILD       := $(CACHE)/build

images: ## build the image archives into .cache/images
	$(PHASE) building the images
	@mkdir -p $(BUILD) $(IMAGES)
	$(GO) build -o $(BUILD)/mkimage ./tests/images/cmd/mkimage
	@for app in $(IMAGE_APPS); do \
		name=$${app%%:*}; pkgs=$${app#*:}; bins=""; entry=""; \
		for pkg in $${pkgs//+/ }; do \
			bin=$$(basename $$pkg); \
			$(GO) build -ldflags '-s -w' -o $(BUILD)/$$bin ./$$pkg; \
			bins="$$bins -bin $(BUILD)/$$bin:/usr/local/bin/$$bin"; \
			if [ -z "$$entry" ]; then entry=/usr/local/bin/$$bin; fi; \
		done; \
		$(BUILD)/mkimage -o $(IMAGES)/$$name.tar.tmp -ref ambit.local/$$name:dev -version $(VERSION) \
			-entrypoint $$entry $$bins; \
		mv $(IMAGES)/$$name.tar.tmp $(IMAGES)/$$name.tar; \
	done
	@ls -l $(IMAGES)

# Tests. Packages that start a test cluster run one at a time (-p 1): each cluster takes most
# of a 2-core machine while it starts.
TEST_FLAGS ?= -timeout 30m
E2E_DIRS    := tests/smoke tests/istiodlite tests/mesh tests/demo
# Fuzz targets (package:Func) that every test run exercises for FUZZ_TIME. It is a count of
# inputs, not a duration: with a duration, Go 1.26's fuzz coordinator can report its own
# deadline as the target's failure ("context deadline exceeded", go.dev/issue/75804, fixed in
# Go 1.27) when a worker is slow to stop on a busy machine. 100000 inputs take 2-12 s per target
# here (8000-62000 per second).
FUZZ_TARGETS := istiod-lite/model/authz:FuzzConvertAuthorizationPolicy \
	internal/hbone:FuzzParseRequest internal/hbone:FuzzFrames internal/hbone:FuzzRecordRead internal/zds:FuzzDecode \
	internal/authz:FuzzCompileEvaluate ztunnel/dns:FuzzHandle cni/plugin:FuzzParseConfig
FUZZ_TIME    ?= 100000x
E2E_PKGS    := $(addprefix ./,$(E2E_DIRS))
UNIT_PKGS    = $$($(GO) list ./... | grep -v $(foreach d,$(E2E_DIRS),-e /$(d)$$) -e /tests/bench)

test: tools images check-generate ## run every test (unit, race, end-to-end in a real cluster); needs root
	$(PHASE) gofmt and vet
	@gofmt_out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$gofmt_out" ]; then echo "gofmt needed:"; echo "$$gofmt_out"; exit 1; fi
	$(GO) vet ./...
	$(PHASE) unit tests with -race
	$(RACE_TEST) $(TEST_FLAGS) $(UNIT_PKGS)
	$(PHASE) fuzzing
	@for f in $(FUZZ_TARGETS); do \
		echo "fuzzing $$f for $(FUZZ_TIME)"; \
		$(GO) test -run='^$$' -fuzz="^$${f#*:}$$" -fuzztime=$(FUZZ_TIME) ./$${f%%:*} || exit 1; \
	done
	$(PHASE) end-to-end tests
	$(GO) test -p 1 -v $(TEST_FLAGS) $(E2E_PKGS)
	$(PHASE) make test passed

BENCH_PKGS := ./tests/bench/...

# The data-path benchmark's load generator (fortio, pinned in tests/tools/fortio/go.mod) and its
# images: fortio's static binary, and nginx and iperf3 from Debian with the shared libraries ldd
# lists for them. They go to their own folder, so only the benchmark's cluster imports them.
# The suites run one at a time (-p 1): each owns a cluster, and two would measure each other.
BENCH_IMAGES := $(CACHE)/bench-images
FORTIO_STAMP := $(BIN)/.fortio-$(call sum,tests/tools/fortio/go.sum)
NGINX_STREAM := /usr/lib/nginx/modules/ngx_stream_module.so

$(FORTIO_STAMP):
	@mkdir -p $(BIN)
	$(PHASE) building fortio
	cd tests/tools/fortio && $(GO) build -ldflags '-s -w' -o $(BIN)/ fortio.org/fortio
	@rm -f $(BIN)/.fortio-* && touch $@

bench-images: deps $(FORTIO_STAMP) ## build the data-path benchmark's images (fortio, nginx, iperf3) into .cache/bench-images
	@mkdir -p $(BUILD) $(BENCH_IMAGES)
	$(GO) build -o $(BUILD)/mkimage ./tests/images/cmd/mkimage
	$(BUILD)/mkimage -o $(BENCH_IMAGES)/fortio.tar -ref ambit.local/fortio:dev \
		-version $$($(BIN)/fortio version) -bin $(BIN)/fortio
	$(BUILD)/mkimage -o $(BENCH_IMAGES)/nginx.tar -ref ambit.local/nginx:dev \
		-version $$(dpkg-query -W -f '$${Version}' nginx) -entrypoint /usr/sbin/nginx \
		-dynbin /usr/sbin/nginx:/usr/sbin/nginx -dynbin $(NGINX_STREAM):$(NGINX_STREAM)
	$(BUILD)/mkimage -o $(BENCH_IMAGES)/iperf3.tar -ref ambit.local/iperf3:dev \
		-version $$(dpkg-query -W -f '$${Version}' iperf3) -dynbin /usr/bin/iperf3:/usr/bin/iperf3
	@ls -l $(BENCH_IMAGES)

bench: tools images bench-images ## run the benchmarks (needs root); figures are ratios against baselines of the same run
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 1x -timeout 30m -v $(BENCH_PKGS)

unit: ## run the tests that need no cluster
	$(RACE_TEST) $(TEST_FLAGS) $(UNIT_PKGS)

e2e: tools images ## run the end-to-end tests in a real cluster (needs root)
	$(GO) test -p 1 -v $(TEST_FLAGS) $(E2E_PKGS)

GOLANGCI_LINT_VERSION := v2.6.2

$(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION):
	@mkdir -p $(BIN)/lint
	GOBIN=$(BIN)/lint $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/lint/golangci-lint $@

lint: $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION) ## gofmt, go vet and golangci-lint (linters listed in .golangci.yml)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$< run ./...

DEMO_FLAGS ?=

demo: tools images ## start a local 2-node cluster and show the scenario working (needs root)
	$(GO) run ./tests/demo/cmd/demo $(DEMO_FLAGS)

clean: ## remove built binaries and images (the Go build cache stays)
	rm -rf $(CACHE) bin
