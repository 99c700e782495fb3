"""Teacher scores from pair files: validation naming file:line, and the [B, 1+H] batch feature.

Oracle: the scores written into the file, cut to the H kept negatives, read back
from padded and from packed batches.
"""

import json

import numpy as np
import pytest

from embed_jax import tokenization
from embed_jax.data import pair_files, packed_batches, tasks, vocabularies
from embed_jax.data.pipeline import DataConfig, PairBatchIterator
from embed_jax.data.sources import PairFileDataSource

FIELDS = pair_files.PairFields(negatives=("n",), teacher_scores="s")


def _write(path, records):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
  return str(path)


@pytest.mark.parametrize("line, reason", [
    ('{"x": "q", "y": "p", "n": ["a"], "s": [0.5]}', "holds 1 scores; expected 1 + 1"),
    ('{"x": "q", "y": "p", "n": ["a"], "s": [0.5, NaN]}', "'s'[1] is nan"),
    ('{"x": "q", "y": "p", "n": ["a"], "s": [0.5, Infinity]}', "'s'[1] is inf"),
    ('{"x": "q", "y": "p", "n": ["a"], "s": [0.5, "high"]}', "must be a number"),
    ('{"x": "q", "y": "p", "n": ["a"], "s": 0.5}', "must be a list"),
    ('{"x": "q", "y": "p", "n": ["a"]}', "missing field 's'"),
])
def test_bad_teacher_scores_name_file_and_line(tmp_path, line, reason):
  good = {"x": "q0", "y": "p0", "n": ["a", "b"], "s": [1.0, 0.5, 0.25]}
  path = _write(tmp_path / "pairs.jsonl", [good, line])
  with pytest.raises(pair_files.BadInputError) as e:
    pair_files.read_pairs(path, FIELDS, skip_bad_examples=False)
  assert str(e.value).startswith(f"{path}:2: ") and reason in str(e.value)
  assert "\n" not in str(e.value)


def test_tsv_scores_column_is_a_json_list(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("x\ty\tn\ts\nq\tp\ta\t[2, -1.5]\nq\tp\ta\t[2]\n", encoding="utf-8")
  with pytest.raises(pair_files.BadInputError, match=r"pairs.tsv:3: .*expected 1 \+ 1"):
    pair_files.read_pairs(str(path), FIELDS, skip_bad_examples=False)
  records = pair_files.read_pairs(str(path), FIELDS, skip_bad_examples=True)
  assert records.teacher_scores == [[2.0, -1.5]]


def test_batches_carry_the_scores_padded_and_packed(tmp_path, sentencepiece_path):
  rng = np.random.default_rng(0)
  pairs = []
  for i in range(16):
    negatives = [f"negative {i} {k} " + "word " * k for k in range(i % 4)]  # 0..3, H = 2 kept.
    pairs.append({"x": f"question {i}", "y": f"answer {i} " + "more " * (i % 3), "n": negatives,
                  "s": [float(v) for v in rng.normal(size=1 + len(negatives))]})
  path = _write(tmp_path / "pairs.jsonl", pairs)
  encoder = tokenization.TextEncoder(tokenization.SentencePieceTokenizer(sentencepiece_path))
  vocab = {s: vocabularies.TemplateVocabulary(encoder, s) for s in ("x", "y")}
  tasks.register_pair_task("teacher_pairs", PairFileDataSource({"train": path}, FIELDS),
                           tasks.pair_output_features(vocab["x"], vocab["y"]))
  config = DataConfig(task="teacher_pairs", batch_size=16, x_length=16, y_length=16,
                      num_negatives=2, shuffle=False, num_shards=1)
  batch = next(PairBatchIterator(config, process_index=0, process_count=1))
  scores = batch["teacher_scores"]
  assert scores.shape == (16, 3) and scores.dtype == np.float32
  # File order (shuffle=False, one shard): row i is pair i.
  for i, pair in enumerate(pairs):
    kept = pair["s"][:3]
    np.testing.assert_allclose(scores[i, :len(kept)], np.float32(kept))
    assert np.all(scores[i, len(kept):] == 0)
    valid = batch["neg_mask"][i].any(axis=-1)
    assert valid.sum() == min(len(pair["n"]), 2)
  packed = packed_batches.pack_batch(batch, groups=4, pooling="eos",
                                     closing_ids={"x": vocab["x"].template.suffix_ids[-1],
                                                  "y": vocab["y"].template.suffix_ids[-1]},
                                     pad_id=encoder.pad_id)
  np.testing.assert_array_equal(packed["teacher_scores"], scores)
  np.testing.assert_array_equal(packed["neg_valid"], batch["neg_mask"].any(axis=-1))


def test_cli_flag_reaches_the_user_files_task(tmp_path):
  import argparse  # pylint: disable=import-outside-toplevel
  import seqio  # pylint: disable=import-outside-toplevel
  from embed_jax.cli import user_files  # pylint: disable=import-outside-toplevel
  path = _write(tmp_path / "pairs.jsonl", [{"x": "q", "y": "p", "n": ["a"], "s": [1.0, 0.0]}])
  parser = argparse.ArgumentParser()
  user_files.add_arguments(parser)
  args = parser.parse_args(["--train_files", path, "--negatives_field", "n",
                            "--teacher_scores_field", "s"])
  name = user_files.apply(args)
  source = seqio.get_mixture_or_task(name).source
  assert source.fields == FIELDS
  assert source.records("train").teacher_scores == [[1.0, 0.0]]
