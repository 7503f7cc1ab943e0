"""Bundled baselines, one plugin per folder: hashbench.baselines.<name>."""
