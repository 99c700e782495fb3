"""embed_jax: contrastive pre-training of text and code embedding models in JAX.

The recipe of "Text and Code Embeddings by Contrastive Pre-Training"
(cpt-text / cpt-code): one Transformer embeds both sides of a pair, the
embeddings are L2-normalised, and a symmetric InfoNCE loss over all in-batch
pairs (sharded across the device mesh) trains it.
"""

__version__ = "0.1.0"
