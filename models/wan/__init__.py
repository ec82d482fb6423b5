"""Wan2.1 model family."""
