# kcbackup — continuous WAL archiving and point-in-time restore for PostgreSQL.
#
#   make build     bin/kcbackup and bin/kcbackup-operator (static, CGO_ENABLED=0)
#   make test      every test, real PostgreSQL / MinIO / kube-apiserver included
#                  (and, with CI=true, make test-cluster)
#   make lint      gofmt and go vet (the product and the deploy/helm, deploy/olm modules)
#   make test-deploy  the Helm chart linted and rendered, the OLM bundle validated (part of make test)
#   make generate  deepcopy, CRD and RBAC from the markers in api/ and operator/, and the copies of
#                  the CRD and monitoring files in deploy/helm and deploy/olm, and make docs
#   make demo      archive, back up, break and restore a local PostgreSQL (file:// archive)
#   make bench     kcbackup side by side with the standard PostgreSQL tools (BENCH_FLAGS=-quick: a smoke run)
#   make test-cluster  the KeycloakBackup story on a real single-node Kubernetes (root; see test/cluster)
#   make release VERSION=x.y.z  dist/: the install manifest (images pinned to vx.y.z), the images as
#                  OCI archives, the binaries, release notes from CHANGELOG.md and SHA256SUMS (root; deploy/release/release.sh)
#   make docs      regenerate docs/cli.md from the kcbackup commands' --help
#   make soak      the randomized history checker over many seeds: make soak SEEDS=200
#                  [FIRST_SEED=1] [STEPS=10]; failures and a summary of what ran in bin/soak-report.jsonl
#
# Components the tests start are built once into $(KCBACKUP_CACHE) by test/tools/install.sh
# (PostgreSQL 17, 18 and 19: a Debian root filesystem each, about 1-3 minutes each the first time;
# PostgreSQL 16: a portable build from the npm registry, seconds).

SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
export KCBACKUP_CACHE ?= $(HOME)/.cache/kcbackup
export KUBEBUILDER_ASSETS ?= $(KCBACKUP_CACHE)/envtest-v1.37.2-etcd-v3.6.6
export CGO_ENABLED := 0
export GOFLAGS := -mod=mod
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILDINFO := github.com/kcbackup/kcbackup/walarchive/buildinfo
LDFLAGS := -s -w -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).revision=$(REVISION)
GO_TEST_FLAGS ?= -count=1 -timeout 75m

.PHONY: all build test test-deploy lint generate demo bench tools clean test-cluster soak release docs

all: build

build:
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kcbackup ./sidecar
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kcbackup-operator ./operator
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/kubectl-kcbackup ./operator/kubectl-kcbackup

tools:
	test/tools/install.sh postgres pgroot-17 pgroot-18 pgroot-19 pg16-portable minio envtest promtool kubectl recovery-tools

# Modules of their own, so that their dependencies stay out of the product's go.mod: the Helm
# chart's tests (helm.sh/helm/v4) and the OLM bundle's (github.com/operator-framework/api).
DEPLOY_MODULES := deploy/helm deploy/olm

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	go vet ./...
	@for m in $(DEPLOY_MODULES); do echo "go vet ($$m)"; (cd $$m && go vet ./...) || exit 1; done

# The chart rendered and linted, the OLM bundle validated (a few seconds each).
test-deploy:
	@rc=0; for m in $(DEPLOY_MODULES); do echo "go test ($$m)"; (cd $$m && go test -count=1 ./...) || rc=1; done; exit $$rc

# The history checker runs its short seeds and the fixed histories of its findings (make
# soak runs many seeds). With CI=true, the real single-node Kubernetes story (make
# test-cluster, root) runs after the Go tests, even when they failed, and make test fails if
# either did; it fails, never skips, when it is not root or cannot build a component. After
# the Go tests, not beside them: on 2 cores both at once would only slow each other down.
# What the node needs (test/cluster/build.sh: about 12 minutes cold, seconds warm) is built
# beside the Go tests, which mostly wait on servers; its log is bin/cluster-build.log.
test: tools lint build
	@rc=0; bpid=; \
	if [ "$$CI" = true ]; then mkdir -p bin; test/cluster/build.sh > bin/cluster-build.log 2>&1 & bpid=$$!; fi; \
	KCBACKUP_HISTORY=1 KCBACKUP_HISTORY_FIXED=1 go test $(GO_TEST_FLAGS) ./... || rc=$$?; \
	$(MAKE) --no-print-directory test-deploy || rc=1; \
	if [ -n "$$bpid" ] && ! wait $$bpid; then echo "test/cluster/build.sh failed (bin/cluster-build.log):"; tail -n 40 bin/cluster-build.log; rc=1; fi; \
	if [ "$$CI" = true ]; then $(MAKE) --no-print-directory test-cluster || rc=1; fi; \
	exit $$rc

# Builds what the node needs into $(KCBACKUP_CACHE) first (about 12 minutes cold on 2 cores, measured 2026-12-02; seconds warm).
test-cluster:
	test/cluster/build.sh
	go vet -tags cluster ./test/cluster/
	go test -tags cluster -count=1 -timeout 45m -v ./test/cluster/

# After the markers: the copies of the CRD and monitoring files in the Helm chart and the OLM
# bundle, and the generated parts of docs/ (the CRD's field table).
generate:
	operator/hack/generate.sh
	cd deploy/helm && go test -count=1 -run TestChartFilesAreDeploysFiles . -update
	cd deploy/olm && go test -count=1 -run TestBundleCRDIsDeploysCRD . -update
	$(MAKE) --no-print-directory docs

demo: build
	test/demo/demo.sh

bench: build tools
	go run ./test/bench $(BENCH_FLAGS)

SEEDS ?= 20
FIRST_SEED ?= 1
STEPS ?= 10
soak: tools
	mkdir -p bin && rm -f bin/soak-report.jsonl
	KCBACKUP_HISTORY_SEEDS=$(SEEDS) KCBACKUP_HISTORY_FIRST_SEED=$(FIRST_SEED) KCBACKUP_HISTORY_STEPS=$(STEPS) \
	KCBACKUP_HISTORY_REPORT=$(CURDIR)/bin/soak-report.jsonl \
	go test -count=1 -timeout 0 -run 'TestHistory$$' -v ./test/history

docs:
	go test -count=1 ./docs -run 'TestCLIReferenceIsTheCommandsHelp|TestFieldReferenceIsTheCRD' -update

# VERSION is required (the default, git describe, is not a release version).
release:
	@case "$(origin VERSION)" in command\ line|environment) ;; *) echo "make release needs VERSION=x.y.z"; exit 2;; esac
	deploy/release/release.sh $(VERSION)

clean:
	rm -rf bin demo dist
