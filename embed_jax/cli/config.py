"""`embed-jax config`: parse gin files and overrides and print the resulting bindings.

A quick way to check a config before launching a run: every unknown name,
missing file or bad value is reported here exactly as `train` would report it.
"""

from __future__ import annotations

import argparse

import gin

from embed_jax import gin_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
  del parser  # Only the shared gin flags.


def run(args: argparse.Namespace) -> int:
  gin_config.parse(args.gin_files, args.gin_bindings)
  print(gin.config_str())
  return 0
