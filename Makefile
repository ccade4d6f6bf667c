# nodeagent: `sudo make demo` runs the lab demo, `sudo make test` runs every test.
export PATH := $(PATH):/usr/local/go/bin:/root/go/bin
GO ?= go
BIN := bin/nodeagent
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: all build deps demo test test-vm unit lab vet clean bench-kube-proxy bench-metallb fuzz fuzz-short soak

all: build

deps:
	@scripts/deps.sh

build: deps
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/nodeagent

# The lab demo is a test that prints what a user would see (NODEAGENT_DEMO_MODE=iptables for the other mode).
demo: build
	NODEAGENT_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -run '^TestDemo$$' -v ./test/netns/

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	@! $(GO) list -deps ./cmd/nodeagent | grep -qx testing || { echo "vet: the nodeagent binary links package testing (a test harness reached it)"; exit 1; }

# Every test: unit tests, then the real-kernel and lab tests (root; they skip with a reason
# otherwise), the fuzz targets briefly, the ipvs mode in the VM, and the real cluster: nodeagent as
# a DaemonSet from its image, reached from the LAN, and a handful of upstream conformance tests.
test: build vet
	@# The API server and MetalLB builds (minutes when cold) go first, outside go test's timeout.
	test/kube/build.sh >/dev/null
	test/kube/metallb-build.sh >/dev/null
	$(GO) test -count=1 -timeout 25m ./...
	$(MAKE) fuzz-short
	$(MAKE) test-vm
	$(MAKE) test-cluster conformance-focused

# Every fuzz target for a bounded time: 10 s each in make test, FUZZTIME (default 5m) in make fuzz.
FUZZTIME ?= 5m
fuzz-short:
	scripts/fuzz.sh 10s
fuzz:
	scripts/fuzz.sh $(FUZZTIME)

# The ipvs mode on a kernel that has IPVS (the host's has none): the ipvs package's kernel tests,
# the lab's ipvs row and the ipvs-only lab tests, inside vm/run (Debian's kernel under qemu; see
# vm/lab.sh). The binaries are built here, on the host, because compiling under emulation takes
# minutes (into bin/vm/, so that a `make build` while the VM runs does not swap the agent under
# it); kube-apiserver comes from test/kube's cache, shared writable into the VM.
# VM_MODES=all runs every mode's row in the VM; VM_TESTFLAGS=-test.v shows each test.
VM_MODES ?= ipvs
VM_TESTFLAGS ?=
test-vm: deps
	@mkdir -p bin/vm
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/vm/nodeagent ./cmd/nodeagent
	$(GO) test -c -o bin/vm/lab.test ./test/netns/
	$(GO) test -c -o bin/vm/ipvs.test ./proxier/ipvs/
	@kube=$$(test/kube/build.sh | tail -1) && start=$$(date +%s) && \
	vm/run --rw "$$(dirname "$$kube")" -- vm/lab.sh $(VM_MODES) $(VM_TESTFLAGS) && \
	echo "test-vm: passed in $$(( $$(date +%s) - start ))s (VM boot included)"

# nodeagent and kube-proxy side by side through one real API server (root; the first run builds
# kube-apiserver and kube-proxy into test/kube's cache, minutes; the sweep about 20 minutes a mode).
# Results are committed, one directory a mode.
AGAINST_SWEEP ?= 1000,5000,10000
bench-kube-proxy: build
	for mode in nftables iptables; do \
	  $(BIN) bench --against kube-proxy --proxy-mode $$mode --sweep $(AGAINST_SWEEP) --out bench/results/against-kube-proxy/$$mode || exit 1; \
	done

# nodeagent against MetalLB v0.14.8 itself (root; the first run builds MetalLB's controller and
# speaker from the module proxy into test/kube's cache, about two minutes): the lab test that
# `make test` runs too, writing its decision table and failover figures to bench/results/metallb/.
bench-metallb: build
	NODEAGENT_METALLB_OUT=$(CURDIR)/bench/results/metallb NODEAGENT_BIN=$(CURDIR)/$(BIN) \
	  $(GO) test -count=1 -timeout 15m -run '^TestAgainstMetalLB$$' -v ./test/netns/

# The soak-and-fault suite at full length (root; about 15 minutes): 10 minutes of churn through a
# real API server with traffic, kill -9, API server and etcd outages, rules tampered with, nftables
# transactions refused. Each scenario's row goes to bench/results/soak/results.md (the short
# version of every scenario runs in `make test`).
SOAK_OUT := bench/results/soak
soak: build
	@mkdir -p $(SOAK_OUT) && rm -f $(SOAK_OUT)/*.row
	NODEAGENT_SOAK=full NODEAGENT_SOAK_OUT=$(CURDIR)/$(SOAK_OUT) NODEAGENT_BIN=$(CURDIR)/$(BIN) \
	  $(GO) test -count=1 -timeout 60m -run '^TestSoak' -v ./test/netns/ > $(SOAK_OUT)/soak.log 2>&1; \
	status=$$?; \
	{ printf '# Soak and faults (`make soak`, %s, %s)\n\n' "$$(date -u +%Y-%m-%d)" "$(VERSION)"; \
	  printf '| scenario | mode | run | duration | changes | failed connections | lost updates | RSS (MiB) | goroutines | CPU per change | recovery |\n'; \
	  printf '|---|---|---|---|---|---|---|---|---|---|---|\n'; \
	  cat $(SOAK_OUT)/*.row 2>/dev/null; \
	  printf '\nFrom the test log (soak.log):\n\n```\n'; \
	  grep -E 'soak(_faults)?_test.go:[0-9]+: .*(connections to stable|kernels equal|repaired after|answered on every node|failed transactions|restarts|changes in|RSS|first sync)' $(SOAK_OUT)/soak.log | sed 's/^ *//'; \
	  grep -E '^ *--- (PASS|FAIL)' $(SOAK_OUT)/soak.log | sed 's/^ *//'; \
	  printf '```\n'; } > $(SOAK_OUT)/results.md; \
	rm -f $(SOAK_OUT)/*.row; \
	grep -E '^(---|ok|FAIL)' $(SOAK_OUT)/soak.log; exit $$status

# The unit, real-kernel and lab tests inside a privileged container (root; podman --privileged
# --network=none, the repository mounted at /src) from an image built here without a registry:
# debootstrap's Debian, Go from the module proxy, scripts/deps.sh, the modules and kube-apiserver
# (test/container/build.sh; cached by its recipe; the better part of an hour cold on 2 cores).
# Everything but ./vm (make test-vm); the cluster tests skip (no containerd in the image).
.PHONY: test-container
test-container:
	@test/container/deps.sh
	test/container/run.sh

clean:
	rm -rf bin

# nodeagent's container image as an OCI archive, without a registry or a daemon: a static agent
# and the host's iptables-nft, nft and conntrack with their libraries (the Containerfile builds
# the same from Debian's packages with docker or podman). Import: ctr -n k8s.io images import.
IMAGE ?= nodeagent:dev
IMAGE_TAR ?= bin/nodeagent-image.tar
.PHONY: image
image: deps
	@mkdir -p bin/image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/image/nodeagent ./cmd/nodeagent
	$(GO) run ./test/cluster/cmd/ociimage -kind nodeagent -name $(IMAGE) -binary bin/image/nodeagent -o $(IMAGE_TAR)
	$(GO) run ./test/cluster/cmd/ociimage -check $(IMAGE_TAR)

# A real cluster in the lab (root): control plane, three nodes with containerd and kubelet,
# CoreDNS, and nodeagent as a DaemonSet from make image's archive, applied with kubectl apply -k
# deploy/ (PROXY=kube-proxy runs kube-proxy instead; PROXY_MODE=iptables either in iptables
# mode). The first run builds the Kubernetes binaries into test/cluster/build.sh's cache (about
# 20 minutes on 2 cores); then it takes a minute or two.
# make cluster brings one up and keeps it until Ctrl-C.
PROXY ?= nodeagent
PROXY_MODE ?=
CLUSTER_BINS := kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy coredns agnhost
.PHONY: test-cluster cluster
test-cluster: image
	@test/cluster/deps.sh
	test/cluster/build.sh $(CLUSTER_BINS)
	NODEAGENT_CLUSTER=1 PROXY=$(PROXY) PROXY_MODE=$(PROXY_MODE) NODEAGENT_IMAGE=$(CURDIR)/$(IMAGE_TAR) $(GO) test -count=1 -timeout 30m -run '^TestCluster$$' -v ./test/cluster/

cluster: image
	@test/cluster/deps.sh
	test/cluster/build.sh $(CLUSTER_BINS)
	NODEAGENT_CLUSTER_HOLD=1 PROXY=$(PROXY) PROXY_MODE=$(PROXY_MODE) NODEAGENT_IMAGE=$(CURDIR)/$(IMAGE_TAR) $(GO) test -count=1 -timeout 0 -run '^TestClusterHold$$' -v ./test/cluster/

# The upstream e2e suite against the cluster (root; builds e2e.test into the cache first, about 6
# minutes cold). make conformance-focused: a handful of [sig-network] Services conformance tests
# against nodeagent, every one must pass (a few minutes). make conformance: every [sig-network]
# conformance test under nodeagent and under kube-proxy, one cluster after the other, and the
# side-by-side table in test/cluster/results/conformance.md (about an hour).
.PHONY: conformance conformance-focused
conformance-focused: image
	@test/cluster/deps.sh
	test/cluster/build.sh $(CLUSTER_BINS) e2e.test
	NODEAGENT_CLUSTER=1 PROXY=$(PROXY) PROXY_MODE=$(PROXY_MODE) NODEAGENT_IMAGE=$(CURDIR)/$(IMAGE_TAR) $(GO) test -count=1 -timeout 60m -run '^TestConformance$$' -v ./test/cluster/

conformance: image
	@test/cluster/deps.sh
	test/cluster/build.sh $(CLUSTER_BINS) e2e.test
	@mkdir -p test/cluster/results
	NODEAGENT_CLUSTER=1 E2E_COMPARE=1 E2E_FOCUS=all PROXY_MODE=$(PROXY_MODE) E2E_TABLE=$(CURDIR)/test/cluster/results/conformance.md \
	  NODEAGENT_IMAGE=$(CURDIR)/$(IMAGE_TAR) $(GO) test -count=1 -timeout 4h -run '^TestConformance$$' -v ./test/cluster/
