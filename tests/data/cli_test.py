"""`embed-jax data show | stats | train-vocab`, run in-process on real data."""

import gin
import pytest

from embed_jax import gin_config, main


@pytest.fixture
def pairs_gin(tmp_path, sentencepiece_path, write_jsonl):
  """A gin file selecting a task over a small pair file, with the test vocabulary."""
  data = write_jsonl(tmp_path / "pairs.jsonl", [
      {"question": "How do I reverse a list in place?", "answer": "Call list.reverse() on it."},
      {"question": "What does zip do?", "answer": "It pairs items " + "and more items " * 40},
  ])
  config = tmp_path / "pairs.gin"
  config.write_text(f"""
import embed_jax.data.pipeline
import embed_jax.data.tasks
text_encoder.sentencepiece_model = '{sentencepiece_path}'
qa/file_task.name = 'qa_pairs'
qa/file_task.train = '{data}'
qa/file_task.x_field = 'question'
qa/file_task.y_field = 'answer'
DataConfig.task = @qa/file_task()
DataConfig.x_length = 32
DataConfig.y_length = 24
""")
  return str(config)


def test_show_prints_delimited_pairs(pairs_gin, capsys):
  assert main.main(["data", "show", f"--gin_file={pairs_gin}", "-n", "2"]) == 0
  out = capsys.readouterr().out
  assert "== qa_pairs[train]" in out and "'['=2" in out and "'}'=5" in out
  assert "[ How do I reverse a list in place?]" in out
  assert "{ Call list.reverse() on it.}" in out
  assert "y (24 tokens, truncated)" in out


def test_stats_prints_lengths_and_truncation(pairs_gin, capsys):
  assert main.main(["data", "stats", f"--gin_file={pairs_gin}"]) == 0
  out = capsys.readouterr().out
  assert "qa_pairs (rate 1): 2 examples" in out
  assert "truncated at 24: 1 (50.0%)" in out and "p50=" in out


@pytest.mark.parametrize("task", ["stdlib_code", "stdlib_text"])
def test_show_builtin_tasks(task, sentencepiece_path, capsys):
  assert main.main(["data", "show", "--task", task, "--split", "validation", "-n", "2",
                    "--gin.text_encoder.sentencepiece_model=" + sentencepiece_path]) == 0
  out = capsys.readouterr().out
  assert f"== {task}[validation]" in out and out.count("-- #") == 2
  if task == "stdlib_code":
    assert "def " in out and "      { " in out


def test_train_vocab_from_files(tmp_path, capsys, write_jsonl):
  data = write_jsonl(tmp_path / "p.jsonl", [{"x": f"text number {i}", "y": f"def f{i}(): return {i}"}
                                            for i in range(50)])
  output = tmp_path / "v.model"
  assert main.main(["data", "train-vocab", f"--input={data}", f"--output={output}",
                    "--vocab_size=400"]) == 0
  assert output.is_file()
  assert "'['=2 ... ']'=3" in capsys.readouterr().out


def test_show_without_a_task_says_what_to_set():
  with pytest.raises(gin_config.GinConfigError, match="set DataConfig.task"):
    main.main(["data", "show"])


def test_bad_input_is_reported_by_file_and_line(tmp_path, sentencepiece_path, capsys):
  (tmp_path / "bad.jsonl").write_text('{"x": "a b", "y": "c d"}\n{"x": "e"}\n')
  flags = [f"--gin.text_encoder.sentencepiece_model={sentencepiece_path}",
           "--gin.bad/file_task.name='bad'", f"--gin.bad/file_task.train='{tmp_path}/bad.jsonl'",
           "--gin.DataConfig.task=@bad/file_task()"]
  assert main.main(["data", "stats"] + flags) == 1
  assert "bad.jsonl:2: missing field 'y'" in capsys.readouterr().err
  gin_config.reset()  # A second command in the same process.
  assert main.main(["data", "stats", "--gin.skip_bad_examples=True"] + flags) == 0
  assert "bad (rate 1): 1 examples" in capsys.readouterr().out


def test_stats_and_show_read_train_files_without_a_gin_task(tmp_path, sentencepiece_path, capsys, write_jsonl):
  data = write_jsonl(tmp_path / "qa.jsonl", [{"query": f"question {i} about lists", "positive": f"answer {i}"}
                                             for i in range(7)])
  common = ["--train_files", data, "--x_field", "query", "--y_field", "positive",
            "--gin.text_encoder.sentencepiece_model=" + sentencepiece_path]
  assert main.main(["data", "stats"] + common) == 0
  assert "user_files (rate 1): 7 examples" in capsys.readouterr().out
  gin.clear_config()
  assert main.main(["data", "show", "-n", "1"] + common) == 0
  out = capsys.readouterr().out
  assert "== user_files[train]" in out and "question 0 about lists" in out


def test_stats_counts_documents_of_a_document_task(tmp_path, sentencepiece_path, capsys):
  for k in range(3):
    (tmp_path / f"d{k}.txt").write_text("\n\n".join(" ".join(f"w{k}{p}{i}" for i in range(9)) for p in range(3)))
  (tmp_path / "short.txt").write_text("tiny\n")
  config = tmp_path / "docs.gin"
  config.write_text(f"""
import embed_jax.data.pipeline
import embed_jax.data.document_tasks
text_encoder.sentencepiece_model = '{sentencepiece_path}'
docs/document_task.name = 'cli_docs'
docs/document_task.train = '{tmp_path}/*.txt'
DataConfig.task = @docs/document_task()
""")
  assert main.main(["data", "stats", f"--gin_file={config}"]) == 0
  out = capsys.readouterr().out
  assert "cli_docs (rate 1): 6 examples" in out
  assert "from 4 documents: 1 too short, 0 without a pair, 6 pairs" in out
