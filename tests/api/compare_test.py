"""`embed-jax compare` on three runs: the README snippet's real run and two variants of its
config.gin (one changed setting, two changed settings and no results.json: a run still going)."""

import json
import re
import shutil

import pytest

from embed_jax import main
from embed_jax.cli import compare
from embed_jax.main import CommandLineError

LR, SEED, BATCH = "learning_rate_schedule.learning_rate", "train.seed", "SyntheticPairs.batch_size"


def _variant(source, target, changes, results=None):
  shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", "final", "sentence_*",
                                                               "pretrained", "*.lock"))
  text = (target / "config.gin").read_text()
  for name, value in changes.items():
    text, count = re.subn(rf"^{re.escape(name)} = .*$", f"{name} = {value}", text, flags=re.M)
    assert count == 1, name
  (target / "config.gin").write_text(text)
  if results is None:
    (target / "results.json").unlink()
  else:
    (target / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(readme_run, tmp_path_factory):
  real = readme_run[2]
  root = tmp_path_factory.mktemp("sweep")
  shutil.copytree(real, root / "a_real", ignore=shutil.ignore_patterns("checkpoints", "final",
                                                                       "sentence_*"))
  results = json.loads((real / "results.json").read_text())
  _variant(real, root / "b_lr", {LR: "0.003"},
           {**results, "final_loss": 0.25, "final_eval": {"code_search_mrr@10": 0.5}})
  _variant(real, root / "c_going", {SEED: "7", BATCH: "32"})
  return root, results


def _table(capsys, *argv):
  assert main.main(["compare", *argv]) == 0
  lines = capsys.readouterr().out.splitlines()
  header, rows = lines[0].split(), [line.split() for line in lines[2:5]]
  return header, {row[0]: dict(zip(header, row)) for row in rows}, lines


def test_rows_show_exactly_the_differing_bindings(runs, capsys):
  root, results = runs
  header, rows, _ = _table(capsys, str(root / "*"))
  assert header == ["run", BATCH, LR, SEED, "steps", "loss", "code_search_mrr@10"]
  assert sorted(rows) == ["a_real", "b_lr", "c_going"]
  assert [rows[r][LR] for r in ("a_real", "b_lr", "c_going")] == ["0.0001", "0.003", "0.0001"]
  assert [rows[r][SEED] for r in ("a_real", "b_lr", "c_going")] == ["0", "0", "7"]
  assert rows["c_going"][BATCH] == "32" and rows["a_real"][BATCH] == "16"
  assert rows["a_real"]["steps"] == "2" and rows["b_lr"]["loss"] == "0.25"
  assert float(rows["a_real"]["loss"]) == pytest.approx(results["final_loss"], rel=1e-3)
  mrr = results["final_eval"]["code_search_mrr@10"]
  assert float(rows["a_real"]["code_search_mrr@10"]) == pytest.approx(mrr, rel=1e-3)
  assert rows["b_lr"]["code_search_mrr@10"] == "0.5"
  # No results.json: the last train and eval records of metrics.jsonl.
  assert rows["c_going"]["steps"] == "2"
  assert float(rows["c_going"]["code_search_mrr@10"]) == pytest.approx(mrr, rel=1e-3)


def test_identical_runs_show_no_bindings(runs, capsys):
  root, _ = runs
  _, rows, lines = _table(capsys, str(root / "a_real"), str(root / "a_real"), str(root / "a_*"))
  assert list(rows) == ["a_real"] and lines[0].split() == [
      "run", "steps", "loss", "code_search_mrr@10"]


def test_plot_by_a_binding_tail_writes_a_png(runs, capsys, tmp_path):
  root, results = runs
  out = tmp_path / "plots" / "mrr.png"
  main.main(["compare", str(root / "*"), "--plot", "code_search_mrr@10", "--by", "learning_rate",
             "--out", str(out)])
  assert "wrote" in capsys.readouterr().out
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  points = compare.plot([compare.read_run(str(p)) for p in sorted(root.iterdir())],
                        "code_search_mrr@10", LR, str(tmp_path / "again.png"))
  mrr = results["final_eval"]["code_search_mrr@10"]
  assert points == [(0.0001, pytest.approx(mrr)), (0.0001, pytest.approx(mrr)), (0.003, 0.5)]


def test_mistakes_name_the_setting(runs, tmp_path):
  root, _ = runs
  with pytest.raises(CommandLineError, match="no such binding in the runs' config.gin"):
    main.main(["compare", str(root / "*"), "--plot", "loss", "--by", "nope"])
  with pytest.raises(CommandLineError, match="no run has it"):
    main.main(["compare", str(root / "*"), "--plot", "nope", "--by", "train.seed"])
  with pytest.raises(CommandLineError, match="not a run directory"):
    main.main(["compare", str(tmp_path)])
  with pytest.raises(CommandLineError, match="no run directories match"):
    main.main(["compare", str(tmp_path / "none_*")])
  with pytest.raises(CommandLineError, match="go together"):
    main.main(["compare", str(root / "*"), "--plot", "loss"])


def test_the_example_sweep_prints_train_commands_whose_bindings_apply():
  import os  # pylint: disable=import-outside-toplevel
  import shlex  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import gin  # pylint: disable=import-outside-toplevel
  from embed_jax import gin_config  # pylint: disable=import-outside-toplevel
  import embed_jax.train.trainer  # pylint: disable=import-outside-toplevel,unused-import
  script = os.path.join(os.path.dirname(main.__file__), "..", "configs", "sweeps", "learning_rate.sh")
  lines = subprocess.run(["bash", script, "--print"], capture_output=True, text=True, check=True,
                         env={**os.environ, "OUT": "sweep"}).stdout.splitlines()
  seen = set()
  for line in lines:
    files, bindings, rest = main.split_gin_flags(shlex.split(line))
    assert rest[:2] == ["embed-jax", "train"] and rest[2].startswith("--model_dir=sweep/")
    gin.clear_config(clear_constants=True)
    gin_config.parse(files, bindings)  # Raises on a binding that does not apply.
    seen.add((gin.query_parameter(LR), gin.query_parameter(SEED)))
  assert seen == {(lr, seed) for lr in (1e-4, 1e-3, 1e-2) for seed in (0, 1)}
