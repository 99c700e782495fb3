"""embed_jax: contrastive pre-training of text and code embedding models in JAX.

The recipe of "Text and Code Embeddings by Contrastive Pre-Training"
(cpt-text / cpt-code): one Transformer embeds both sides of a pair, the
embeddings are L2-normalised, and a symmetric InfoNCE loss over all in-batch
pairs (sharded across the device mesh) trains it.
"""

import os as _os

# gs:// paths through fsspec/gcsfs, not tensorflow's gfile (see embed_jax.paths);
# set before etils.epath first picks a backend.
_os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
