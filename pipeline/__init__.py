"""Image embeddings at scale: a Beam pipeline around keras.applications models."""

__version__ = "0.1.0"
