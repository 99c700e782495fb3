# Two commands do all the set-up on a fresh machine (see README.md):
#   make quickstart   installs into .venv and runs the main job
#   make test         installs into .venv (with test extras) and runs the tests
.PHONY: test bench-smoke quickstart venv

venv:
	bash tools/setup_venv.sh

test:
	bash tools/setup_venv.sh test
	.venv/bin/python -m pytest -n 2 -q
	$(MAKE) bench-smoke

# Every benchmark in its smallest form, so CI proves they still run.
bench-smoke:
	.venv/bin/python bench/loss_memory.py --smoke
