"""Guided masking finds planted false negatives: texts of the same meaning under different ids.

Pairs come in clusters of two with the same meaning (nearly the same x and y,
different ids). A guide that knows the meanings must remove exactly the
partner of each pair, so the guided loss equals the loss whose duplicate ids
mark the partners; a random guide removes other candidates, not the partners.
"""

from __future__ import annotations

import jax
import numpy as np

from embed_jax import partitioning
from embed_jax.losses import contrastive_loss


def unit(a):
  return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def test_guide_masks_planted_false_negatives_and_a_random_guide_does_not(assert_close):
  rng = np.random.default_rng(0)
  batch, dim, clusters = 24, 16, 12
  cluster = rng.permutation(np.repeat(np.arange(clusters), 2))  # partners across shards
  meaning = unit(rng.normal(size=(clusters, dim)))
  x = unit(meaning[cluster] + 0.05 * rng.normal(size=(batch, dim)))
  y = unit(meaning[cluster] + 0.05 * rng.normal(size=(batch, dim)))
  ids = np.arange(batch, dtype=np.int32)  # every y text distinct
  guide_meaning = unit(rng.normal(size=(clusters, 32)))
  knowing = (guide_meaning[cluster], guide_meaning[cluster])
  random = (unit(rng.normal(size=(batch, 32))), unit(rng.normal(size=(batch, 32))))
  mesh = partitioning.create_mesh(data=8)

  @jax.jit
  def loss(mask_duplicates, guide=None):
    return contrastive_loss(x, y, np.float32(np.log(20.0)), mesh=mesh, impl="ring", tile_size=2,
                            guide_margin=0.1, guide=guide, mask_duplicates=mask_duplicates)

  guided, guided_metrics = loss(guide=knowing, mask_duplicates=ids)
  partners_masked, _ = loss(mask_duplicates=cluster.astype(np.int32))
  unguided, _ = loss(mask_duplicates=ids)
  random_guided, random_metrics = loss(guide=random, mask_duplicates=ids)
  # The partners are hard (same meaning): unmasked, they dominate the loss.
  assert float(unguided) > 1.5 * float(partners_masked)
  assert_close(guided, partners_masked, name="guided loss = partners masked")
  # One partner among the 23 candidates of each of the 2 x 24 rows.
  candidates = 2 * batch * (batch - 1)
  np.testing.assert_allclose(guided_metrics["masked_share"], 2 * batch / candidates, rtol=1e-6)
  assert abs(float(random_guided) - float(partners_masked)) > 0.2 * float(partners_masked)
  assert float(random_metrics["masked_share"]) > 0.0
