"""Pair builders on hand-made documents: adjacency, crops inside the document, ICT removal, lengths, seeds."""

import numpy as np
import pytest

from embed_jax.data import pair_builders
from embed_jax.errors import ConfigError

# Word i of the document is "w{i}": a span's words tell where in the document it lies.
def numbered_document(paragraph_lengths):
  start, paragraphs = 0, []
  for n in paragraph_lengths:
    paragraphs.append(" ".join(f"w{i}" for i in range(start, start + n)))
    start += n
  return "\n\n".join(paragraphs)


def positions(span):
  return [int(w[1:]) for w in span.split()]


def is_run(pos):
  return pos == list(range(pos[0], pos[0] + len(pos)))


def test_neighbouring_paragraphs_are_adjacent_and_capped():
  doc = numbered_document([30, 3, 12, 40, 8])
  pairs = pair_builders.Neighbouring(x_words=10, y_words=6, min_span_words=5).build(doc, seed=0)
  # The 3-word paragraph pairs with nothing: (12, 40) and (40, 8) remain.
  assert len(pairs) == 2
  for x, y in pairs:
    px, py = positions(x), positions(y)
    assert is_run(px) and is_run(py) and py[0] == px[-1] + 1
    assert len(px) <= 10 and len(py) <= 6
  assert positions(pairs[0][0]) == list(range(35, 45)) and positions(pairs[0][1]) == list(range(45, 51))


def test_neighbouring_word_windows_tile_the_document():
  doc = numbered_document([50, 57])
  builder = pair_builders.Neighbouring(unit="words", x_words=7, y_words=13)
  pairs = builder.build(doc, seed=4)
  assert len(pairs) == 107 // 20
  for (x, y), (x2, _) in zip(pairs, pairs[1:] + [(None, None)]):
    px, py = positions(x), positions(y)
    assert len(px) == 7 and len(py) == 13 and is_run(px + py)
    if x2 is not None:
      assert positions(x2)[0] == py[-1] + 1
  assert builder.build(doc, seed=4) == pairs
  offsets = {positions(builder.build(doc, seed=s)[0][0])[0] for s in range(30)}
  assert len(offsets) > 1 and max(offsets) <= 107 - 5 * 20


def test_max_pairs_keeps_a_seeded_subset():
  doc = numbered_document([10] * 12)
  every = pair_builders.Neighbouring().build(doc, 0)
  some = pair_builders.Neighbouring(max_pairs_per_document=3).build(doc, 0)
  assert len(every) == 11 and len(some) == 3 and set(some) <= set(every)


def test_cropping_crops_lie_inside_the_document_with_lengths_in_range():
  doc = numbered_document([200])
  builder = pair_builders.Cropping(min_ratio=0.1, max_ratio=0.3, x_words=50, y_words=40, pairs_per_document=50)
  pairs = builder.build(doc, seed=1)
  assert len(pairs) == 50
  lengths = {"x": [], "y": []}
  for x, y in pairs:
    for side, span, cap in (("x", x, 50), ("y", y, 40)):
      pos = positions(span)
      assert is_run(pos) and 0 <= pos[0] and pos[-1] < 200
      assert 20 <= len(pos) <= min(60, cap)
      lengths[side].append(len(pos))
  assert max(lengths["x"]) > 40 and max(lengths["y"]) == 40  # Ratios up to 0.3 are capped at y_words.
  assert pairs != builder.build(doc, seed=2) and pairs == builder.build(doc, seed=1)


def test_ict_removes_the_sentence_from_its_passage_at_the_keep_rate():
  sentences = [f"Sentence number {i} says something about topic {i % 4}." for i in range(60)]
  doc = " ".join(sentences[:30]) + "\n\n" + " ".join(sentences[30:])
  builder = pair_builders.InverseCloze(passage_sentences=5, min_sentences=3, keep_rate=0.0, y_words=1000)
  pairs = builder.build(doc, seed=0)
  assert len(pairs) == 12
  for k, (x, y) in enumerate(pairs):
    passage = sentences[5 * k:5 * k + 5]
    assert x in passage and x not in y
    assert y == " ".join(s for s in passage if s != x)
  kept = pair_builders.InverseCloze(passage_sentences=5, keep_rate=1.0, y_words=1000).build(doc, seed=0)
  assert all(x in y for x, y in kept)
  many = [doc.replace("topic", f"theme{j}") for j in range(40)]
  half = [x in y for d in many for x, y in pair_builders.InverseCloze(keep_rate=0.5).build(d, 0)]
  assert 0.3 < np.mean(half) < 0.7


def test_short_documents_make_no_pairs():
  short = "only a few words here"
  for builder in (pair_builders.Neighbouring(), pair_builders.Cropping(), pair_builders.InverseCloze()):
    assert builder.too_short(short) and builder.build(short, 0) == []


@pytest.mark.parametrize("make", [
    lambda: pair_builders.Neighbouring(unit="lines"),
    lambda: pair_builders.Cropping(min_ratio=0.6, max_ratio=0.5),
    lambda: pair_builders.InverseCloze(keep_rate=2.0),
])
def test_bad_settings_are_config_errors(make):
  with pytest.raises(ConfigError):
    make()
