"""Checkpoints: the catalogue (weights.toml), where files live, download, safe reading, conversion."""
