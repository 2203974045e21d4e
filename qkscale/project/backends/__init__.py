"""Projection backends, one module each; their libraries import only when a method runs."""
