"""Pieces shared by every family: attention, rope, norms, ops, checkpoint reading."""
