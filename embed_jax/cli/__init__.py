"""Subcommands of the `embed-jax` command line, one module each (see embed_jax/main.py)."""
