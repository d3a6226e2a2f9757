"""Image embeddings at scale: a Beam pipeline around keras.applications and keras-hub models."""
