"""Checkpoints: our own (orbax) and imports from `transformers` (hf_config, hf_params, hf_files)."""
