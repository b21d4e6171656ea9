"""Inference backends: each runs an exported segengine graph and returns its named outputs."""
