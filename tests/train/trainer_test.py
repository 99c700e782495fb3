"""The training loop end to end with a tiny model on synthetic pairs.

One uninterrupted run (in this process, 8 devices) is the reference for: a run
killed with SIGKILL, resumed, stopped by SIGTERM and resumed again; a run whose
newest checkpoint is truncated, resumed on another mesh shape; and two
processes x 4 devices (gloo).

The loss is the dense `reference` impl here: the sharded impls are proven
equal to it in tests/losses, and on CPU gloo their all_gather/reduce-scatter
pair costs seconds a step across processes, which would make this file slow.
"""

import json
import os
import re
import shutil
import signal
import socket

import numpy as np
import pytest

from embed_jax.checkpoints import model_dir as model_dir_lib
from tests.train.run_helpers import (
    STEPS, assert_same_run as _assert_same_run, checkpoint_steps as _checkpoint_steps,
    final_params as _final_params, metrics as _metrics, start as _start,
    train_in_process as _train_in_process, wait_for_steps as _wait_for_steps)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, minilm_tokenizer_json):
  model_dir = tmp_path_factory.mktemp("reference")
  summary = _train_in_process(model_dir, minilm_tokenizer_json)
  assert summary["step"] == STEPS and summary["stopped_by"] is None
  return str(model_dir)


def test_reference_run_leaves_checkpoints_metrics_and_a_model_dir(reference):
  assert _checkpoint_steps(reference) == [4, 6, 8]
  metrics = _metrics(reference)
  assert sorted(metrics) == list(range(1, STEPS + 1))
  assert all(m["skipped"] == 0 and np.isfinite(m["loss"]) for m in metrics.values())
  assert os.path.isdir(os.path.join(reference, "final", "params"))


def test_truncated_latest_checkpoint_falls_back_to_previous_on_another_mesh(
    reference, tmp_path, capsys, minilm_tokenizer_json):
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  shutil.rmtree(run / "final")
  with open(run / "metrics.jsonl", "w", encoding="utf-8"):
    pass  # The resumed steps are written again.
  state_dir = run / "checkpoints" / str(STEPS) / "state"
  files = sorted((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(files[-1], "r+b") as f:
    f.truncate(files[-1].stat().st_size // 2)
  summary = _train_in_process(run, minilm_tokenizer_json, ["create_mesh.fsdp=2"])
  assert summary["start_step"] == STEPS - 2
  assert "damaged" in capsys.readouterr().out
  # Moved aside, never deleted: its files are all still there.
  aside = [d for d in os.listdir(run / "checkpoints") if d.startswith(f"{STEPS}.damaged-")]
  assert len(aside) == 1 and (run / "checkpoints" / aside[0] / "state").is_dir()
  import jax  # pylint: disable=import-outside-toplevel
  mesh = jax.tree.leaves(summary["state"].params)[0].sharding.mesh
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  for a, b in zip(jax.tree.leaves(_final_params(reference)), jax.tree.leaves(_final_params(run))):
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


def test_sigkill_then_sigterm_then_resume_matches_uninterrupted_run(reference, tmp_path,
                                                                   minilm_tokenizer_json):
  run = str(tmp_path / "run")
  log = open(tmp_path / "log.txt", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  proc = _start(run, minilm_tokenizer_json, log=log)
  try:
    assert _wait_for_steps(proc, run, 3), "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    killed_at = max(_metrics(run))
    assert killed_at < STEPS and not os.path.exists(os.path.join(run, "final"))

    proc = _start(run, minilm_tokenizer_json, log=log)
    lines = sum(1 for _ in open(os.path.join(run, "metrics.jsonl"), encoding="utf-8"))
    assert _wait_for_steps(proc, run, lines + 1), "the resumed run ended before SIGTERM"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 128 + signal.SIGTERM
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
      stopped_at = json.loads(f.readlines()[-1])["step"]
    assert stopped_at in _checkpoint_steps(run)
    assert stopped_at < STEPS and not os.path.exists(os.path.join(run, "final"))

    proc = _start(run, minilm_tokenizer_json, log=log)
    assert proc.wait(240) == 0, open(tmp_path / "log.txt", encoding="utf-8").read()[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    log.close()
  _assert_same_run(reference, run)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(reference, tmp_path, minilm_tokenizer_json):
  run = str(tmp_path / "run")
  port = _free_port()
  logs = [open(tmp_path / f"log{i}.txt", "w", encoding="utf-8") for i in range(2)]  # pylint: disable=consider-using-with
  procs = [_start(run, minilm_tokenizer_json, devices=4, log=logs[i], extra=(
      f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"))
           for i in range(2)]
  try:
    codes = [p.wait(300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs:
      f.close()
  assert codes == [0, 0], [open(tmp_path / f"log{i}.txt", encoding="utf-8").read()[-3000:] for i in range(2)]
  ma, mb = _metrics(reference), _metrics(run)
  assert sorted(mb) == list(range(1, STEPS + 1))
  for step in ma:
    assert mb[step]["loss"] == pytest.approx(ma[step]["loss"], abs=1e-5, rel=1e-5), step
  import jax  # pylint: disable=import-outside-toplevel
  # gloo sums across the two processes in another order than 8 local devices do; Adam's
  # m / sqrt(v) turns that float32 rounding into update differences of a few 1e-6 per step in
  # coordinates whose gradient is near zero (seen: 1.05e-5 after 8 steps).
  for a, b in zip(jax.tree.leaves(_final_params(reference)), jax.tree.leaves(_final_params(run))):
    np.testing.assert_allclose(b, a, atol=3e-5, rtol=0)


def test_consecutive_nonfinite_steps_stop_the_run_with_the_last_good_checkpoint(
    tmp_path, minilm_tokenizer_json):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from embed_jax.train import checkpointing, trainer  # pylint: disable=import-outside-toplevel
  from embed_jax.train.objective import ContrastiveObjective  # pylint: disable=import-outside-toplevel

  class NaNFromStep4(ContrastiveObjective):
    """The loss is NaN on synthetic batches 4, 5, ... (batch s has y_ids[0] = 16 * s)."""

    def loss(self, embeddings, log_temp, batch):
      loss, metrics = super().loss(embeddings, log_temp, batch)
      return loss * jnp.where(batch["y_ids"][0] >= 16 * 4, jnp.nan, 1.0), metrics

  run = tmp_path / "run"
  with pytest.raises(trainer.NonFiniteError, match=r"2 consecutive steps .*\(up to step 5\).*checkpoints/4"):
    _train_in_process(run, minilm_tokenizer_json, ["train.max_consecutive_nonfinite=2"],
                      objective=NaNFromStep4)
  metrics = _metrics(run)
  assert [metrics[s]["skipped"] for s in (1, 2, 3, 4, 5)] == [0, 0, 0, 1, 1]
  assert metrics[5]["nonfinite_total"] == 2 and max(metrics) == 5
  assert _checkpoint_steps(run) == [2, 4]
  # Checkpoint 4 (a skipped step) holds step 3's good params, finite, and restores.
  checkpointer = checkpointing.Checkpointer(run)
  try:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    state = checkpointer.manager.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  finally:
    checkpointer.close()
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state["params"]))
  assert int(state["nonfinite_total"]) == 1


def test_packed_run_equals_padded_run_without_dropout(tmp_path, capsys, minilm_tokenizer_json):
  """StepConfig.pack: host batches packed per (shard, chunk); same losses and params as padded."""
  common = ["train.steps=4", "train.checkpoint_every=100", "ContrastiveObjective.dropout=False",
            "SyntheticPairs.batch_size=64", "SyntheticPairs.y_length=32"]
  padded = _train_in_process(tmp_path / "padded", minilm_tokenizer_json,
                             common + ["StepConfig.pack=False"])
  packed = _train_in_process(tmp_path / "packed", minilm_tokenizer_json, common + [
      "StepConfig.pack=True", "StepConfig.grad_cache_chunks=2"])
  assert packed["step"] == padded["step"] == 4 and packed["compiled_shapes"] >= 1
  rows = re.search(r"first batch rows \{'x': (\d+), 'y': (\d+), 'neg': (\d+)\}", capsys.readouterr().out)
  assert int(rows[2]) < 64 and int(rows[3]) < 64  # y texts (<= 16 tokens in rows of 32) share rows.
  ma, mb = _metrics(tmp_path / "padded"), _metrics(tmp_path / "packed")
  assert sorted(mb) == [1, 2, 3, 4]
  for step in ma:
    assert np.isfinite(mb[step]["loss"]) and mb[step]["skipped"] == 0
    # Not accuracy: synthetic hard negatives are other pairs' y texts, exact ties in the
    # logits, so which one argmax picks turns on the last bit of float32.
    for key in ("loss", "grad_norm", "temperature", "learning_rate", "positive_cosine"):
      assert mb[step][key] == pytest.approx(ma[step][key], abs=1e-5, rel=1e-5), (step, key)
  import jax  # pylint: disable=import-outside-toplevel
  for a, b in zip(jax.tree.leaves(_final_params(tmp_path / "padded")),
                  jax.tree.leaves(_final_params(tmp_path / "packed"))):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


def test_bfloat16_compute_trains_and_the_final_model_records_it(tmp_path, minilm_tokenizer_json):
  summary = _train_in_process(tmp_path / "low", minilm_tokenizer_json, [
      "train.steps=3", "train.checkpoint_every=100", "train.compute_dtype='bfloat16'"])
  assert summary["step"] == 3
  metrics = _metrics(tmp_path / "low")
  assert all(np.isfinite(m["loss"]) and m["skipped"] == 0 for m in metrics.values())
  import jax  # pylint: disable=import-outside-toplevel
  final = model_dir_lib.load_model(tmp_path / "low" / "final")
  assert final.config.encoder.dtype == "bfloat16"
  assert {str(p.dtype) for p in jax.tree.leaves(final.params)} == {"float32"}
