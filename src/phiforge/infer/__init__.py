"""Inference: the generation engine and sampling."""
