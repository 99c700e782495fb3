"""Never lose a run: each fault a user or a machine can cause, injected, and what it leaves on disk.

Every test asserts the exit code (or the error raised in process), the one-line
message and the files left behind (checkpoint steps before and after, metrics
lines). The base run trains 4 steps of the tiny model (checkpoints at 2 and 4).
"""

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest

from embed_jax import main as main_lib
from embed_jax.train import checkpointing, run_config, run_lock
from tests.train import run_helpers as h

BASE_STEPS = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory, minilm_tokenizer_json):
  model_dir = tmp_path_factory.mktemp("base")
  summary = h.train_in_process(model_dir, minilm_tokenizer_json, steps=BASE_STEPS)
  assert summary["step"] == BASE_STEPS
  return str(model_dir)


def _copy(base, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(base, run)
  return run


def _cli(argv, capsys):
  """Runs the console entry point in process: (exit code, stderr lines)."""
  gin.clear_config(clear_constants=True)  # A run in this process parsed (and locked) gin.
  old = sys.argv
  sys.argv = ["embed-jax"] + list(argv)
  try:
    with pytest.raises(SystemExit) as stopped:
      main_lib.console_main()
  finally:
    sys.argv = old
  err = capsys.readouterr().err
  return stopped.value.code, [line for line in err.splitlines() if line.strip()]


def _train_argv(model_dir, tokenizer_json, extra=(), steps=BASE_STEPS):
  return h.command(model_dir, tokenizer_json, extra, steps)[3:]  # Drop python -m embed_jax.main.


def test_run_records_its_config_and_results(base):
  config = open(os.path.join(base, run_config.CONFIG_FILE), encoding="utf-8").read()
  assert "train.steps = 4" in config and "DecoderConfig.d_model = 32" in config
  results = json.load(open(os.path.join(base, run_config.RESULTS_FILE), encoding="utf-8"))
  assert results["step"] == BASE_STEPS and np.isfinite(results["final_loss"])
  assert results["final_loss"] == h.metrics(base)[BASE_STEPS]["loss"]


def test_model_config_change_on_resume_is_refused_and_touches_nothing(
    base, tmp_path, capsys, minilm_tokenizer_json):
  run = _copy(base, tmp_path)
  before = h.tree_listing(run)
  code, err = _cli(_train_argv(run, minilm_tokenizer_json, ["--gin.DecoderConfig.d_model=64"]),
                   capsys)
  assert code == 2 and len(err) == 1, err
  assert "DecoderConfig.d_model: 32 -> 64" in err[0] and "new --model_dir" in err[0]
  assert h.tree_listing(run) == before
  # Forced past the config check, the shapes still refuse it, naming a param and the setting.
  code, err = _cli(_train_argv(run, minilm_tokenizer_json, [
      "--gin.DecoderConfig.d_model=64", "--gin.train.allow_config_changes=True"]), capsys)
  assert code == 2 and len(err) == 1, err
  assert "does not fit this run's state" in err[0] and "(32,)" in err[0] and "(64,)" in err[0]
  assert "DecoderConfig.d_model" in err[0]
  assert h.tree_listing(run) == before


def test_safe_changes_are_reported_and_the_run_continues(base, tmp_path, capsys,
                                                         minilm_tokenizer_json):
  run = _copy(base, tmp_path)
  summary = h.train_in_process(run, minilm_tokenizer_json, [
      "learning_rate_schedule.learning_rate=1e-3", "train.log_every=2"], steps=BASE_STEPS + 2)
  out = capsys.readouterr().out
  assert summary["start_step"] == BASE_STEPS and summary["step"] == BASE_STEPS + 2
  assert "resuming with changed settings" in out and "train.steps: 4 -> 6" in out
  assert "learning_rate_schedule.learning_rate: 0.003 -> 0.001" in out
  assert h.checkpoint_steps(run) == [2, 4, 6]


def _damage(run, step):
  state = run / "checkpoints" / str(step) / "state"
  files = sorted((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(files[-1], "r+b") as f:
    f.truncate(files[-1].stat().st_size // 2)


def test_every_checkpoint_damaged_stops_with_them_moved_aside(base, tmp_path, capsys,
                                                              minilm_tokenizer_json):
  run = _copy(base, tmp_path)
  for step in (2, 4):
    _damage(run, step)
  sizes = {s: sum(f.stat().st_size for f in (run / "checkpoints" / str(s)).rglob("*") if f.is_file())
           for s in (2, 4)}
  code, err = _cli(_train_argv(run, minilm_tokenizer_json), capsys)
  assert code == 2 and "every checkpoint of this run is damaged" in err[-1], err
  assert "--gin.train.start_over=True" in err[-1]
  aside = sorted(os.listdir(run / "checkpoints"))
  assert [d.split(".")[0] for d in aside if "damaged" in d] == ["2", "4"]
  for d in aside:
    if "damaged" in d:  # Nothing deleted: every byte is still there.
      kept = sum(f.stat().st_size for f in (run / "checkpoints" / d).rglob("*") if f.is_file())
      assert kept == sizes[int(d.split(".")[0])]
  summary = h.train_in_process(run, minilm_tokenizer_json, ["train.start_over=True"],
                               steps=BASE_STEPS)
  assert summary["start_step"] == 0 and summary["step"] == BASE_STEPS
  assert sorted(h.metrics(run)) == [1, 2, 3, 4]  # The old run's lines were replaced.


def test_transient_read_errors_are_retried_then_stop_without_touching(
    base, tmp_path, monkeypatch, minilm_tokenizer_json):
  run = _copy(base, tmp_path)
  before = h.tree_listing(run / "checkpoints")
  real = checkpointing.Checkpointer._restore_step  # pylint: disable=protected-access
  calls = []

  def flaky(self, step, abstract):
    calls.append(step)
    if len(calls) < 3:
      raise OSError(errno.EIO, "Input/output error")
    return real(self, step, abstract)
  monkeypatch.setattr(checkpointing.Checkpointer, "_restore_step", flaky)
  monkeypatch.setattr(checkpointing.time, "sleep", lambda seconds: None)
  summary = h.train_in_process(run, minilm_tokenizer_json, steps=BASE_STEPS)
  assert calls == [4, 4, 4] and summary["start_step"] == BASE_STEPS

  def broken(self, step, abstract):
    raise OSError(errno.EIO, "Input/output error")
  monkeypatch.setattr(checkpointing.Checkpointer, "_restore_step", broken)
  with pytest.raises(checkpointing.CheckpointReadError, match=r"cannot read checkpoint .*/4 "
                     r"\(OSError: \[Errno 5\] Input/output error\); nothing was changed"):
    h.train_in_process(run, minilm_tokenizer_json, steps=BASE_STEPS + 2)
  assert h.tree_listing(run / "checkpoints") == before


def test_a_second_trainer_is_refused_and_a_dead_holder_is_taken_over(
    base, tmp_path, capsys, minilm_tokenizer_json):
  run = _copy(base, tmp_path)
  log = open(tmp_path / "first.log", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  first = h.start(run, minilm_tokenizer_json, log=log, steps=40)
  try:
    assert h.wait_for(lambda: h.train_lines(run) > BASE_STEPS, first, what="the first trainer")
    before = h.checkpoint_steps(run)
    code, err = _cli(_train_argv(run, minilm_tokenizer_json, steps=40), capsys)
    assert code == 2 and len(err) == 1, err
    assert f"pid {first.pid}" in err[0] and "in use by another trainer" in err[0]
    assert h.checkpoint_steps(run)[:len(before)] == before
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    log.close()
  # The holder died without releasing its lock: it is stale, and taken over.
  assert os.path.exists(run / run_lock.LOCK_FILE)
  lines = h.records(run)
  assert all(r["step"] == i + 1 for i, r in enumerate(l for l in lines if l["split"] == "train"))
  summary = h.train_in_process(run, minilm_tokenizer_json, steps=40)
  assert summary["step"] == 40 and not os.path.exists(run / run_lock.LOCK_FILE)


def _limit_file_size(limit):
  def apply():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit fail with EFBIG instead.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


def test_a_failed_checkpoint_save_stops_the_run_within_a_step(base, tmp_path,
                                                              minilm_tokenizer_json):
  """A disk that takes no more large files (RLIMIT_FSIZE): the next save fails, the run stops."""
  run = _copy(base, tmp_path)
  shutil.rmtree(run / "final")
  environment = h.env()
  environment.pop("JAX_COMPILATION_CACHE_DIR")  # Its entries are large files too.
  proc = subprocess.run(h.command(run, minilm_tokenizer_json, steps=BASE_STEPS + 6),
                        env=environment, cwd=h.REPO_ROOT, capture_output=True, text=True,
                        timeout=600, preexec_fn=_limit_file_size(256 * 1024), check=False)
  assert proc.returncode == 4, proc.stderr[-3000:]
  assert "saving a checkpoint" in proc.stderr and "failed" in proc.stderr
  assert f"the last good checkpoint is {run}/checkpoints/4" in proc.stderr
  assert h.checkpoint_steps(run) == [2, 4]
  last = max(h.metrics(run))
  # The save of step 6 fails while steps 7 (and maybe 8) run; the step after it is seen to
  # finish stops the run, before step 8's own save.
  assert 6 <= last <= 8, last
  assert len([line for line in proc.stderr.splitlines() if "embed-jax train" in line]) == 1
  assert not (run / "final").exists()


@pytest.mark.parametrize("extra, message", [
    (["--gin.train.steps=2.5"], "gin binding train.steps = 2.5: expected int, got float"),
    (["--gin.train.steps=abc"], "gin binding train.steps = 'abc': expected int, got str"),
    (["--gin.SyntheticPairs.batch_size='8'"], "SyntheticPairs.batch_size = '8': expected int"),
    (["--gin.create_mesh.data=3"], "mesh"),
    (["--gin.SyntheticPairs.batch_size=12"], "12"),
    (["--gin_file=BROKEN"], "unclosed bracket"),
], ids=["float-steps", "text-steps", "text-batch", "mesh", "batch-shards", "gin-syntax"])
def test_user_errors_are_one_line(extra, message, tmp_path, capsys, minilm_tokenizer_json):
  extra = [str(tmp_path / "broken.gin") if e == "--gin_file=BROKEN" else e for e in extra]
  if any(e.endswith("broken.gin") for e in extra):
    (tmp_path / "broken.gin").write_text("train.steps = (4,\n")
    extra = [f"--gin_file={tmp_path / 'broken.gin'}"]
  code, err = _cli(_train_argv(tmp_path / "run", minilm_tokenizer_json, extra), capsys)
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith("embed-jax: error: ") and message in err[0], err
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_model_dir_that_is_a_file_or_a_model_directory_is_refused(base, tmp_path, capsys,
                                                                 minilm_tokenizer_json):
  (tmp_path / "file").write_text("not a folder")
  code, err = _cli(_train_argv(tmp_path / "file", minilm_tokenizer_json), capsys)
  assert code == 2 and len(err) == 1 and "is a file" in err[0], err
  final = os.path.join(base, "final")
  before = h.tree_listing(final)
  code, err = _cli(_train_argv(final, minilm_tokenizer_json), capsys)
  assert code == 2 and len(err) == 1 and "is a model directory" in err[0], err
  assert "train.init_from" in err[0] and h.tree_listing(final) == before


def test_overwrite_only_replaces_a_model_directory(tmp_path, minilm_tokenizer_json):
  from embed_jax.checkpoints import model_dir as model_dir_lib  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "mine"
  folder.mkdir()
  (folder / "notes.txt").write_text("my files")
  with pytest.raises(model_dir_lib.ModelDirError, match="not a model directory .* refusing"):
    model_dir_lib.save_model(folder, None, {}, tokenizer_path=minilm_tokenizer_json,
                             overwrite=True)
  assert (folder / "notes.txt").read_text() == "my files"


def test_changed_data_files_are_reported_on_resume(tmp_path, capsys, minilm_tokenizer_json):
  import embed_jax.data.pipeline  # pylint: disable=import-outside-toplevel,unused-import  # Its gin names.
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"x": f"query {i}", "y": f"answer {i}"}) + "\n"
                           for i in range(40)))
  run = tmp_path / "run"
  data = ["train.data_source='pipeline'", "train.eval_validation_batches=0",
          "DataConfig.batch_size=16", "DataConfig.x_length=16", "DataConfig.y_length=16",
          "DataConfig.task=@p/file_task()", "p/file_task.name='p'", f"p/file_task.train='{pairs}'"]
  h.train_in_process(run, minilm_tokenizer_json, data, steps=2)
  pairs.write_text("".join(json.dumps({"x": f"query {i}", "y": f"answer {i}"}) + "\n"
                           for i in range(10)))
  capsys.readouterr()
  h.train_in_process(run, minilm_tokenizer_json, data, steps=3)
  assert f"the data files changed since the checkpoint was written: {pairs}" in capsys.readouterr().out
  pairs.write_text(pairs.read_text() + json.dumps({"x": "one more", "y": "pair"}) + "\n")
  before = h.checkpoint_steps(run)
  with pytest.raises(Exception, match="data files changed.*strict_data"):
    h.train_in_process(run, minilm_tokenizer_json, data + ["train.strict_data=True"], steps=4)
  assert h.checkpoint_steps(run) == before


def test_kill_storm_resumes_to_the_uninterrupted_run(tmp_path, minilm_tokenizer_json):
  """SIGKILL at random moments (seeded), some inside an asynchronous save: the run still ends
  with the params and the metrics.jsonl of one that was never interrupted."""
  steps, extra = 12, ["--gin.train.checkpoint_every=3"]
  reference = tmp_path / "reference"
  h.train_in_process(reference, minilm_tokenizer_json, ["train.checkpoint_every=3"], steps=steps)
  run = tmp_path / "run"
  rng = random.Random(7)
  kills, inside_save = 0, 0
  log = open(tmp_path / "log.txt", "w", encoding="utf-8")  # pylint: disable=consider-using-with
  try:
    while kills < 3:
      proc = h.start(run, minilm_tokenizer_json, extra=extra, log=log, steps=steps)
      target = h.train_lines(run) + rng.randint(1, 3)
      if kills % 2:  # Kill as soon as a checkpoint is being written.
        saving = lambda: any("tmp" in d for d in _listdir(run / "checkpoints"))
        if not h.wait_for(saving, proc, what="a save in progress"):
          break
        inside_save += any("tmp" in d for d in _listdir(run / "checkpoints"))
      elif not h.wait_for(lambda: h.train_lines(run) >= target, proc, what="more steps"):
        break
      time.sleep(rng.random() * 0.3)
      proc.send_signal(signal.SIGKILL)
      proc.wait(60)
      kills += 1
    proc = h.start(run, minilm_tokenizer_json, extra=extra, log=log, steps=steps)
    assert proc.wait(300) == 0, open(tmp_path / "log.txt", encoding="utf-8").read()[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  assert kills == 3 and inside_save >= 1, (kills, inside_save)
  h.assert_same_run(reference, run, steps=steps)
  got, want = h.records(run), h.records(reference)
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  for a, b in zip(got, want):
    assert set(a) == set(b)
    for key in set(a) - {"split", "pairs_per_s"}:  # Timing differs; everything else must not.
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), (a["step"], key)


def _listdir(folder):
  return os.listdir(folder) if os.path.isdir(folder) else []
