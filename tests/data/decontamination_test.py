"""Decontamination: planted exact and near duplicates are dropped, the rest kept, per-set counts."""

import json
import os

import pytest

from embed_jax import main
from embed_jax.data import decontamination

EVAL = {
    "stsb": ["A man is playing a large flute on the stage tonight.",
             "Three dogs run across the green field chasing a red ball in the afternoon sun."],
    "cosqa": ["def read_lines(path):\n    with open(path) as f:\n        return [l.rstrip('\\n') for l in f]",
              "python read file line by line"],
}


@pytest.fixture(scope="module")
def checker():
  return decontamination.Decontaminator(EVAL, ngram=4, threshold=0.8)


def test_exact_after_case_and_whitespace(checker):
  assert checker.match("a MAN is playing   a large flute\non the stage tonight.") == "stsb"
  assert checker.match("Python read file line by line") == "cosqa"
  assert checker.match("python read file word by word") is None  # Short: exact only.


def test_near_duplicates_both_ways(checker):
  # The eval sentence inside a longer training paragraph.
  longer = ("Intro text here. Three dogs run across the green field chasing a red ball in the "
            "afternoon sun. More unrelated words follow after it for a while.")
  assert checker.match(longer) == "stsb"
  # One word changed out of fifteen: most 4-grams survive... but not 80% of them.
  edited = "Three dogs run across the green field chasing a blue ball in the afternoon sun."
  assert checker.match(edited) is None
  # A training span cut out of the eval code, whitespace changed.
  assert checker.match("with open(path) as f:   return [l.rstrip('\\n') for l in f]") == "cosqa"
  assert checker.match("def write_lines(path, lines): open(path, 'w').writelines(lines)") is None


def test_a_pair_is_dropped_for_any_of_its_texts(checker):
  keep, report = decontamination.filter_pairs(
      [("clean query", "clean document about cats"),
       ("python read file line by line", "something else"),
       ("fine", "fine too", "A man is playing a large flute on the stage tonight.")], checker)
  assert keep == [0] and report.dropped == {"cosqa": 1, "stsb": 1} and report.kept == 1


def test_cli_decontaminates_files_and_reports(tmp_path, write_jsonl, capsys):
  data = tmp_path / "eval"
  (data / "stsb").mkdir(parents=True)
  rows = ["main-captions\tMSRvid\t2012test\t0001\t5.000\t" + EVAL["stsb"][0] + "\tA man plays the flute."]
  (data / "stsb" / "sts-test.csv").write_text("\n".join(rows) + "\n")
  pairs = [{"x": "what is a flute", "y": "a man plays the flute.", "id": 1},
           {"x": "unrelated", "y": "He said: a man is playing a large flute on the stage tonight. Then left.",
            "id": 2},
           {"x": "another", "y": "text that is clean and long enough to have some n-grams in it", "id": 3}]
  (tmp_path / "in").mkdir()
  write_jsonl(tmp_path / "in" / "p.jsonl", pairs)
  out = tmp_path / "out"
  assert main.main(["data", "decontaminate", "--input", str(tmp_path / "in" / "*.jsonl"),
                    "--against", str(data), "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  kept = [json.loads(line) for line in (out / "p.jsonl").read_text().splitlines()]
  # Pair 1's y is an eval sentence (case aside); pair 2's y holds one: every 8-gram of it.
  assert [k["id"] for k in kept] == [3]
  report = json.loads((out / "decontamination.json").read_text())
  assert report["dropped_per_eval_set"] == {"stsb": 2} and "cosqa" in report["missing_eval_sets"]
  assert "dropped 2" in printed


def test_absent_folder_is_skipped():
  assert decontamination.decontaminator("/nonexistent/eval/data") is None


@pytest.mark.skipif(not os.path.isdir("../shared/datasets"), reason="no evaluation data")
def test_the_eval_suites_sets_are_read():
  sets, missing = decontamination.evaluation_sets("../shared/datasets")
  assert not missing and len(sets["cosqa"]) > 6000 and len(sets["stsb"]) > 8000


def _eval_folder(tmp_path, sentences):
  data = tmp_path / "eval"
  (data / "stsb").mkdir(parents=True)
  rows = [f"g\tg\tg\t{i:04d}\t1.0\t{s}\tsomething else entirely {i}" for i, s in enumerate(sentences)]
  (data / "stsb" / "sts-test.csv").write_text("\n".join(rows) + "\n")
  return str(data)


def test_file_and_document_tasks_take_decontaminate_against(tmp_path, write_jsonl, sentencepiece_path):
  import gin  # pylint: disable=import-outside-toplevel
  import seqio  # pylint: disable=import-outside-toplevel
  from embed_jax.data import document_tasks, tasks  # pylint: disable=import-outside-toplevel
  gin.bind_parameter("text_encoder.sentencepiece_model", sentencepiece_path)
  planted = "The quick brown fox jumps over the lazy dog near the river bank."
  against = _eval_folder(tmp_path, [planted])
  pairs = write_jsonl(tmp_path / "p.jsonl", [{"x": "q1", "y": "a clean answer"},
                                             {"x": "q2", "y": planted.upper()},
                                             {"x": "q3", "y": "another clean answer"}])
  name = tasks.file_task(name="clean_pairs", train=pairs, decontaminate_against=against)
  source = seqio.get_mixture_or_task(name).source
  assert source.records("train").x == ["q1", "q3"]
  assert source.decontamination_report("train").dropped == {"stsb": 1}
  doc = tmp_path / "d.txt"
  words = " ".join(f"word{i}" for i in range(20))
  doc.write_text(f"{words}\n\n{planted}\n\n{words} again here\n")
  name = document_tasks.document_task(name="clean_docs", train=str(doc), decontaminate_against=against)
  ds = seqio.get_mixture_or_task(name).get_dataset(None, shuffle=False)
  assert len(list(ds.as_numpy_iterator())) == 0  # Both neighbouring pairs hold the planted sentence.
  assert document_tasks.counts(name)["decontaminated"] == 2
