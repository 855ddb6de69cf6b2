"""modelfs: a model registry mounted as a lazily fetched, digest-verified local filesystem."""

__version__ = "0.1.0"
