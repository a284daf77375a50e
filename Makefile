# genflow: `make demo` (install + the main job) and `make test` (install + the test suite).
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO   ?= runs/digit4/demo
DEMO_OVERRIDES ?= train.epochs=12 train.eval_every=4 train.checkpoint_every=4

# A dataset is reused only if it exists and has a val split (older ones are rebuilt).
has_val = grep -q '"val"' $(1)/manifest.json 2>/dev/null

.PHONY: install demo demo-namo namo-data demo-mmnist mmnist-data dtm-data demo-dtm demo-dtm-lunar bench-gibbs hands-data demo-hands test test-fast bench clean-demo

# torch is installed first and pinned so pip does not pull a multi-GB CUDA build on CPU machines;
# GPU users: `make install TORCH=torch` (or any torch>=2.4 build) .
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	rm -rf genflow.egg-info  # a stale one in the working directory would shadow the installed entry points
	$(PY) -m pip install -q -e ".[dev,export,gym,diffusion,video]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default data (real MNIST from the registry): data -> train -> sample -> eval.
# Precision is `auto`: bf16 where this CPU / GPU computes it natively, else fp32 (the choice is printed).
demo: install
	$(call has_val,datasets/digit4) || $(VENV)/bin/genflow data make digit4 out=datasets/digit4 overwrite=true
	rm -rf $(DEMO)
	$(VENV)/bin/genflow train digit4 --name demo $(DEMO_OVERRIDES)
	$(VENV)/bin/genflow sample $(DEMO) n=16
	$(VENV)/bin/genflow eval chamfer $(DEMO)
	@echo "outputs: $(DEMO)/samples.png  $(DEMO)/loss_trajectory.png  $(DEMO)/samples/  $(DEMO)/metrics.jsonl  (tensorboard --logdir $(DEMO)/tb)"

# NAMO: 24000 procedural scenes (401 val, 401 test) -> shards (~3 min), then both recipes with their
# default configs (measured: 24-25 min each, side by side on one core each). An older dataset is rebuilt.
NAMO_SCENES ?= 24000
namo-data: install
	grep -q '"num_files": $(NAMO_SCENES),' datasets/namo/manifest.json 2>/dev/null \
	  || ( $(VENV)/bin/genflow data make namo scenes=$(NAMO_SCENES) out=datasets/namo-npz workers=2 overwrite=true \
	  && $(VENV)/bin/genflow data import namo datasets/namo-npz out=datasets/namo overwrite=true \
	     val_fraction=0.0167 test_fraction=0.0167 workers=2 )

demo-namo: namo-data
	rm -rf runs/namo-fm/demo runs/namo-diffusion/demo
	$(VENV)/bin/genflow train namo-fm --name demo
	$(VENV)/bin/genflow train namo-diffusion --name demo
	$(VENV)/bin/genflow eval namo runs/namo-fm/demo
	$(VENV)/bin/genflow eval namo runs/namo-diffusion/demo
	$(VENV)/bin/genflow eval compare runs/namo-fm/demo runs/namo-diffusion/demo --out runs/namo-compare

# Moving MNIST world model: 4000 + 1000 sequences, the "fast" model with its default config (~1 h on 2 CPU cores).
mmnist-data: install
	$(call has_val,datasets/mmnist) || $(VENV)/bin/genflow data make moving-mnist out=datasets/mmnist overwrite=true

demo-mmnist: mmnist-data
	rm -rf runs/mmnist-wm/demo
	$(VENV)/bin/genflow train mmnist-wm --name demo
	$(VENV)/bin/genflow sample runs/mmnist-wm/demo n=4
	$(VENV)/bin/genflow eval video runs/mmnist-wm/demo limit=200

# Denoising Thermodynamic Model: binarised MNIST shards, the default CPU config (~30 min on 2 cores), eval.
dtm-data: install
	$(call has_val,datasets/mnist-images) || $(VENV)/bin/genflow data make mnist-images out=datasets/mnist-images overwrite=true

demo-dtm: dtm-data
	rm -rf runs/dtm/demo
	$(VENV)/bin/genflow train dtm --name demo
	$(VENV)/bin/genflow sample runs/dtm/demo n=100
	$(VENV)/bin/genflow eval dtm runs/dtm/demo

# DTM from a stream of LunarLander frames (rendered by a background worker; no dataset on disk).
demo-dtm-lunar: install
	rm -rf runs/dtm-lunar/demo
	SDL_VIDEODRIVER=dummy $(VENV)/bin/genflow train dtm-lunar --name demo

# Hand pose VAE priors: 200k procedural poses, both model types (100 epochs each, minutes on 2 cores), eval.
hands-data: install
	test -f datasets/hands/manifest.json || $(VENV)/bin/genflow data make hands out=datasets/hands overwrite=true

demo-hands: hands-data
	rm -rf runs/hand-vae/demo-standard runs/hand-vae/demo-so3
	$(VENV)/bin/genflow train hand-vae --name demo-standard
	$(VENV)/bin/genflow train hand-vae --name demo-so3 model_type=so3
	$(VENV)/bin/genflow eval hands runs/hand-vae/demo-standard
	$(VENV)/bin/genflow eval hands runs/hand-vae/demo-so3

# Gibbs sampling speed vs THRML (JAX), which lives in its own environment, never in genflow's.
THRML_VENV ?= .venv-thrml
bench-gibbs: install
	test -x $(THRML_VENV)/bin/python || ( python3 -m venv $(THRML_VENV) && \
	  $(THRML_VENV)/bin/pip install -q thrml==0.1.4 "jax[cpu]==0.10.2" jaxlib==0.10.2 numpy==2.4.6 )
	$(PY) benchmarks/gibbs.py --thrml-python $(THRML_VENV)/bin/python

test: install
	bash .ci/pytest.sh

bench: install
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_chamfer.py
	$(PY) benchmarks/bench_train.py
	$(MAKE) namo-data
	$(PY) benchmarks/bench_namo_loader.py
	$(MAKE) mmnist-data
	$(PY) benchmarks/bench_mmnist_baselines.py
	$(MAKE) bench-gibbs
