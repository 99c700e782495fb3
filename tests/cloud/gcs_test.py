"""gs:// paths end to end against a real GCS JSON API: `gcp-storage-emulator`, in memory.

A tiny run trains to gs://bucket/run (checkpoints, metrics, TensorBoard, the
final model), is resumed from its checkpoint to more steps, `embed` reads its
final model from the bucket, `eval` reads a BEIR folder from the bucket and
writes its report there, and pair files are read by a bucket glob. Every
file is then found in the bucket (listed through the emulator) and no local
`gs:` folder has appeared: the failure of a path that went through pathlib
or open() instead of epath.
"""

import gc
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import gin
import numpy as np
import pytest

from tests.train.run_helpers import REPO_ROOT, train_in_process

BUCKET = "bucket"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
  """A GCS emulator on a free port; the variables gcsfs and tensorstore read point at it."""
  for module in ("gcp_storage_emulator", "gcsfs"):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"{module} is not installed (pip install 'embed_jax[test]')")
  port = _free_port()
  proc = subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emulator_main.py"),
       "start", "--host", "localhost", "--port",
       str(port), "--in-memory", "--default-bucket", BUCKET],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://localhost:{port}"
  variables = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
               "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test", "GOOGLE_CLOUD_PROJECT": "test"}
  saved = {k: os.environ.get(k) for k in variables}
  os.environ.update(variables)
  try:
    deadline = time.time() + 30
    while True:
      try:
        socket.create_connection(("localhost", port), timeout=0.2).close()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          pytest.fail("the GCS emulator did not start")
        time.sleep(0.05)
    yield url
  finally:
    _quiet_closed_tensorboard_writers()
    proc.kill()
    proc.wait()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def _quiet_closed_tensorboard_writers() -> None:
  """tensorboardX's GCS event writers upload once more when collected at exit (closed or not).

  With the emulator gone, each retries for two minutes; the run closed them already.
  """
  gc.collect()
  try:
    from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # isinstance() on every object wakes lazy modules' warnings.
    for obj in gc.get_objects():
      if isinstance(obj, record_writer.GCSRecordWriter):
        obj.close = lambda: None


def _bucket_files(prefix: str) -> list[str]:
  """Every object under gs://bucket/prefix, listed through the emulator (relative names)."""
  import fsspec  # pylint: disable=import-outside-toplevel
  fs = fsspec.filesystem("gcs")
  fs.invalidate_cache()
  root = f"{BUCKET}/{prefix}/"
  return sorted(p[len(root):] for p in fs.find(root))


def _local_gs_folders(*roots) -> list[str]:
  """Local folders named `gs:` below any of `roots` (top two levels of the big ones)."""
  found = []
  for root, depth in roots:
    for folder, dirs, _ in os.walk(root):
      if os.path.basename(folder) == "gs:":
        found.append(folder)
      if folder[len(root):].count(os.sep) >= depth:
        dirs[:] = []
  return found


def _main(argv):
  from embed_jax import main  # pylint: disable=import-outside-toplevel
  gin.clear_config(clear_constants=True)
  return main.main(argv)


def _upload(path: str, text: str) -> None:
  from etils import epath  # pylint: disable=import-outside-toplevel
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(path).write_text(text)


def test_train_resume_embed_and_eval_on_gcs(emulator, minilm_tokenizer_json, tmp_path,
                                           monkeypatch, capsys):
  del emulator
  monkeypatch.chdir(tmp_path)
  run = f"gs://{BUCKET}/run"
  extra = ["train.tensorboard=True", "StepConfig.pack=False"]  # Packing: more shapes to compile.
  first = train_in_process(run, minilm_tokenizer_json, extra, steps=2)
  assert first["step"] == 2 and first["final_model"] == f"{run}/final"
  resumed = train_in_process(run, minilm_tokenizer_json, extra, steps=4)
  assert resumed["start_step"] == 2 and resumed["step"] == 4

  files = _bucket_files("run")
  for step in (2, 4):
    assert any(f.startswith(f"checkpoints/{step}/state/") for f in files), files
  for name in ("metrics.jsonl", "config.gin", "results.json", "final/model.json",
               "final/model.gin", "final/tokenizer.json"):
    assert name in files, (name, files)
  assert any(f.startswith("final/params/") for f in files)
  assert any(f.startswith("tensorboard/events.out.tfevents") for f in files), files
  assert "train.lock" not in files  # Released by both runs.
  from etils import epath  # pylint: disable=import-outside-toplevel
  records = [json.loads(line) for line in epath.Path(f"{run}/metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]

  # The final model's model.gin, read from the bucket, names its tokenizer there.
  from embed_jax import gin_config, tokenization  # pylint: disable=import-outside-toplevel
  gin.clear_config(clear_constants=True)
  gin_config.parse([f"{run}/final/model.gin"])
  assert tokenization.text_encoder().tokenizer.name == f"{run}/final/tokenizer.json"
  gin.clear_config(clear_constants=True)

  # embed: model from the bucket, input and output in the bucket.
  texts = ["def add(a, b): return a + b", "sort a list", "read a file"]
  _upload(f"gs://{BUCKET}/in/texts.txt", "\n".join(texts) + "\n")
  assert _main(["embed", "--model", f"{run}/final", "--input", f"gs://{BUCKET}/in/texts.txt",
                "--output", f"gs://{BUCKET}/out/emb.npy", "--no_progress"]) == 0
  assert _main(["embed", "--model", f"{run}/final", "--input", f"gs://{BUCKET}/in/texts.txt",
                "--output", str(tmp_path / "emb.npy"), "--no_progress"]) == 0
  with epath.Path(f"gs://{BUCKET}/out/emb.npy").open("rb") as f:
    in_bucket = np.load(f)
  np.testing.assert_array_equal(in_bucket, np.load(tmp_path / "emb.npy"))
  assert in_bucket.shape[0] == len(texts)

  # eval: a BEIR folder in the bucket, the report written to the bucket.
  beir = f"gs://{BUCKET}/data/tiny"
  docs = {"d1": "add two numbers", "d2": "sort a list in place", "d3": "open and read a file"}
  _upload(f"{beir}/corpus.jsonl", "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                          for k, v in docs.items()))
  _upload(f"{beir}/queries.jsonl", "".join(json.dumps({"_id": q, "text": t}) + "\n"
                                           for q, t in (("q1", "sum"), ("q2", "sorting"))))
  _upload(f"{beir}/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
  assert _main(["eval", "--model", f"{run}/final", "--tasks", "tiny", "--data_dir",
                f"gs://{BUCKET}/data", "--out", f"gs://{BUCKET}/eval"]) == 0
  assert {"results.json", "report.md"} <= set(_bucket_files("eval"))
  results = json.loads(epath.Path(f"gs://{BUCKET}/eval/results.json").read_text())
  assert results["tiny"]["num_queries"] == 2

  # search: corpus and queries from the bucket, hits written to it.
  assert _main(["search", "--model", f"{run}/final", "--corpus", f"{beir}/corpus.jsonl",
                "--queries", f"{beir}/queries.jsonl", "--k", "2",
                "--output", f"gs://{BUCKET}/out/hits.jsonl"]) == 0
  hits = [json.loads(line) for line in
          epath.Path(f"gs://{BUCKET}/out/hits.jsonl").read_text().splitlines()]
  assert [h["query_id"] for h in hits] == ["q1", "q2"]
  assert all(len(h["hits"]) == 2 and {x["id"] for x in h["hits"]} <= set(docs) for h in hits)
  capsys.readouterr()

  assert not _local_gs_folders((str(tmp_path), 99), (REPO_ROOT, 2), (tempfile.gettempdir(), 1),
                               (os.getcwd(), 2))


def test_pair_files_read_by_a_bucket_glob_equal_the_local_read(emulator, tmp_path):
  del emulator
  from embed_jax.data import pair_files  # pylint: disable=import-outside-toplevel
  lines = {"a.jsonl": [{"x": "q1", "y": "d1"}, {"x": "q2", "y": "d2"}],
           "b.jsonl": [{"x": "q3", "y": "d3"}], "skip.txt": [{"x": "no", "y": "no"}]}
  for name, rows in lines.items():
    text = "".join(json.dumps(r) + "\n" for r in rows)
    _upload(f"gs://{BUCKET}/pairs/{name}", text)
    (tmp_path / name).write_text(text, encoding="utf-8")
  remote = pair_files.read_pairs(f"gs://{BUCKET}/pairs/*.jsonl")
  local = pair_files.read_pairs(str(tmp_path / "*.jsonl"))
  assert remote.x == local.x == ["q1", "q2", "q3"] and remote.y == local.y
  assert pair_files.expand_patterns(f"gs://{BUCKET}/pairs/*.jsonl") == [
      f"gs://{BUCKET}/pairs/a.jsonl", f"gs://{BUCKET}/pairs/b.jsonl"]
  with pytest.raises(pair_files.BadInputError, match="no such file"):
    pair_files.read_pairs(f"gs://{BUCKET}/pairs/*.tsv")


def test_run_lock_in_a_bucket_refuses_a_second_trainer(emulator):
  del emulator
  from embed_jax.train import run_lock  # pylint: disable=import-outside-toplevel
  first = run_lock.RunLock(f"gs://{BUCKET}/locked")
  first.acquire()
  try:
    with pytest.raises(run_lock.RunLockedError, match="in use by another trainer"):
      run_lock.RunLock(f"gs://{BUCKET}/locked").acquire()
  finally:
    first.release()
  assert "train.lock" not in _bucket_files("locked")


def test_convert_from_and_to_the_bucket_equals_the_local_conversion(
    emulator, minilm_tokenizer_json, tmp_path):
  """A tiny BERT folder (config.json, model.safetensors, tokenizer.json) converted from gs:// to gs://."""
  del emulator
  import jax  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from embed_jax import paths  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints import convert, model_dir  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints.hf_config import config_to_hf  # pylint: disable=import-outside-toplevel
  from embed_jax.checkpoints.hf_params import params_to_hf  # pylint: disable=import-outside-toplevel
  from embed_jax.models import BertConfig, DualEncoderConfig, init_dual_encoder  # pylint: disable=import-outside-toplevel
  encoder = BertConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=16)
  _, params = init_dual_encoder(DualEncoderConfig(encoder=encoder, pooling="mean"),
                                jax.random.key(1))
  folder = tmp_path / "hf"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(config_to_hf(encoder)))
  tensors = params_to_hf(encoder, model_dir.params_to_numpy(params)["encoder"])
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "model.safetensors"))
  (folder / "tokenizer.json").write_bytes(open(minilm_tokenizer_json, "rb").read())
  paths.copy_tree(folder, f"gs://{BUCKET}/hf")

  local = convert.convert(folder, tmp_path / "converted", pooling="mean")
  remote = convert.convert(f"gs://{BUCKET}/hf", f"gs://{BUCKET}/converted", pooling="mean")
  assert str(remote) == f"gs://{BUCKET}/converted"
  assert model_dir.read_model_record(remote)["metadata"]["source"] == f"gs://{BUCKET}/hf"
  a, b = model_dir.load_model(local), model_dir.load_model(remote)
  for x, y in zip(jax.tree.leaves(model_dir.params_to_numpy(a.params)),
                  jax.tree.leaves(model_dir.params_to_numpy(b.params))):
    np.testing.assert_array_equal(x, y)
  assert a.config == b.config
  assert not _local_gs_folders((str(tmp_path), 99), (os.getcwd(), 2))


def test_a_local_output_folder_is_uploaded_whole_and_only_on_success(emulator):
  """What `export` writes through (sentence-transformers saves to local folders only)."""
  del emulator
  from embed_jax import paths  # pylint: disable=import-outside-toplevel
  with paths.local_output(f"gs://{BUCKET}/export") as local:
    os.makedirs(os.path.join(local, "1_Pooling"))
    with open(os.path.join(local, "1_Pooling", "config.json"), "w", encoding="utf-8") as f:
      f.write("{}")
    with open(os.path.join(local, "modules.json"), "w", encoding="utf-8") as f:
      f.write("[]")
  assert _bucket_files("export") == ["1_Pooling/config.json", "modules.json"]
  with pytest.raises(RuntimeError):
    with paths.local_output(f"gs://{BUCKET}/failed") as local:
      os.makedirs(local)
      with open(os.path.join(local, "half.bin"), "wb") as f:
        f.write(b"x")
      raise RuntimeError("the writer failed")
  assert not _bucket_files("failed")
  assert not os.path.exists(local)  # The temporary folder is gone either way.
