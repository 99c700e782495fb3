"""The data pipeline: seqio tasks of (x, y) pairs, vocabularies, resumable global batches.

The only package of embed_jax that uses tensorflow (through seqio). Importing
`embed_jax.data` imports nothing; the modules are:

  stdlib_corpus      the built-in corpora from the local Python standard library (no tensorflow)
  pair_files         reading JSONL / TSV pair files with errors that name file and line (no tensorflow)
  sentencepiece_training  `train-vocab` and the built-in stdlib SentencePiece model (no tensorflow)
  sources            seqio DataSource over pair files
  vocabularies       seqio Vocabularies wrapping `embed_jax.tokenization`
  preprocessors      batched tokenisation of x, y and negatives; truncation under seqio's trimming
  feature_converter  fixed-length model features; truncation keeps the closing delimiter
  tasks              registered tasks and mixtures; gin-configurable user-file tasks
  order              deterministic, resumable order of examples over shards (no tensorflow)
  pipeline           host-local batches of a task or mixture, with a JSON-serialisable state
  batch_format       the batch contract with the train step; y_ids hashing (no tensorflow)
  global_batches     host-local batches -> global `jax.Array`s sharded over the mesh (no tensorflow)
  packing            several texts per row: best-fit decreasing packing of one set of texts (no tensorflow)
  packed_batches     a host batch packed per (shard, chunk) group for the train step (no tensorflow)
  documents          documents from text / JSONL files, read lazily and sharded by file (no tensorflow)
  pair_builders      neighbouring / cropping / ict: (x, y) pairs from one document (no tensorflow)
  document_sources   seqio sources of documents: files, any tfds dataset
  document_tasks     document_task / tfds_task and the build_pairs preprocessor
  code_corpus        code and docs pairs from any Python tree; python_code, python_docs (no tensorflow)
  decontamination    dropping pairs that duplicate evaluation texts (no tensorflow)
  pair_streams       pair files read line by line (no tensorflow)
  streaming          streamed, resumable host batches for corpora larger than memory
"""
