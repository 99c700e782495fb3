"""Model cards: the export's README.md holds the run's evaluation numbers and settings, from
the trainer's export and from `embed-jax export` of a run's final model."""

import json

from embed_jax import main
from embed_jax.checkpoints import model_card, model_dir


def _check_card(card, run):
  results = json.loads((run / "results.json").read_text())
  assert results["final_eval"]
  for metric, value in results["final_eval"].items():
    assert f"| {metric} |" in card and f"{value:.4f}" in card, metric
  assert "| steps | 2 |" in card and "| global batch | 16 pairs |" in card
  assert "| `ContrastiveObjective.loss_impl` | `'gather'` |" in card
  assert "| `train.data_source` | `'synthetic'` |" in card
  assert "| base model | none (trained from scratch) |" in card
  assert f"| final training loss | {results['final_loss']:.4f} |" in card
  assert "DecoderConfig: 1 layers, d_model 32" in card


def test_the_trainers_export_carries_the_card(readme_run):
  run = readme_run[2]
  card = (run / "sentence_transformers" / "README.md").read_text()
  _check_card(card, run)
  folder = str(run / "sentence_transformers")
  assert f"SentenceTransformer({folder!r})" in card and f"embed_jax.load({folder!r})" in card


def test_embed_jax_export_of_a_runs_final_model_finds_the_run(readme_run, tmp_path, capsys):
  run = readme_run[2]
  assert main.main(["export", "--model", str(run / "final"), "--out", str(tmp_path / "out")]) == 0
  capsys.readouterr()
  _check_card((tmp_path / "out" / "README.md").read_text(), run)


def test_a_model_outside_a_run_gets_a_card_without_training_facts(readme_run, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.copytree(readme_run[2] / "final", tmp_path / "model")
  loaded = model_dir.load_model(tmp_path / "model")
  assert model_card.run_dir_of(tmp_path / "model") is None
  card = model_card.model_card(loaded, tmp_path / "st", "x", run_dir=None)
  assert "## Training" not in card and "## Evaluation" not in card
  assert "| embedding size | 32 |" in card and "wrapped as `[CLS] ... [SEP]`" in card
