# Two commands do all the set-up on a fresh machine (see README.md):
#   make quickstart   installs into .venv and runs the main job
#   make test         installs into .venv (with test extras) and runs the tests
.PHONY: test test-slow bench-smoke quickstart venv

venv:
	bash tools/setup_venv.sh

# Fine-tunes the packaged all-MiniLM-L6-v2 on the built-in stdlib_code corpus (about 6
# minutes on a 2-core CPU), prints held-out MRR@10 before/after training next to BM25,
# and leaves the model in $(QUICKSTART_DIR)/final (a model directory) and
# $(QUICKSTART_DIR)/sentence_transformers (for SentenceTransformer(path)).
QUICKSTART_DIR ?= runs/quickstart
quickstart:
	bash tools/setup_venv.sh quickstart
	.venv/bin/embed-jax train --gin_file=runs/quickstart.gin --model_dir=$(QUICKSTART_DIR)

test:
	bash tools/setup_venv.sh test
	.venv/bin/python -m pytest -n 2 -q -m "not slow"
	$(MAKE) bench-smoke

# The few tests of several minutes each (marked slow): run before a release.
test-slow:
	bash tools/setup_venv.sh test
	.venv/bin/python -m pytest -n 2 -q -m slow

# Every benchmark in its smallest form, so CI proves they still run.
bench-smoke:
	.venv/bin/python bench/loss_memory.py --smoke
	.venv/bin/python bench/mfu.py --smoke
	.venv/bin/python bench/mfu.py --smoke --pack
	.venv/bin/python bench/grad_cache_overhead.py --smoke
	.venv/bin/python bench/compare_sentence_transformers.py --smoke
	.venv/bin/python bench/lora.py --smoke
	.venv/bin/python bench/host_overhead.py --smoke
