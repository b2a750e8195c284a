"""Data: the shapes world renderer and judge, and the seqio tasks built on it."""
