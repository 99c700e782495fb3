"""The command line: help lists subcommands; gin errors exit 2 with a clear message."""

import subprocess
import sys

from embed_jax import main


def test_split_gin_flags():
  files, bindings, rest = main.split_gin_flags(
      ["train", "--gin_file=a.gin", "--gin_file", "b.gin", "--gin.x.y=1", "--model_dir=d"])
  assert files == ["a.gin", "b.gin"]
  assert bindings == ["x.y=1"]
  assert rest == ["train", "--model_dir=d"]


def test_help_lists_every_subcommand(capsys):
  assert main.main(["--help"]) == 0
  out = capsys.readouterr().out
  for name in main.SUBCOMMANDS:
    assert name in out


def test_console_script_reports_unknown_binding():
  proc = subprocess.run(
      [sys.executable, "-m", "embed_jax.main", "config", "--gin.create_mesj.data=2"],
      capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert "create_mesj" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_subcommand_exits_2(capsys):
  assert main.main(["trian"]) == 2
  assert "unknown subcommand 'trian'" in capsys.readouterr().err
