# Two commands do all the set-up on a fresh machine (see README.md):
#   make quickstart   installs into .venv and runs the main job
#   make test         installs into .venv (with test extras) and runs the tests
.PHONY: test quickstart venv

venv:
	bash tools/setup_venv.sh

test:
	bash tools/setup_venv.sh test
	.venv/bin/python -m pytest -n 2 -q
