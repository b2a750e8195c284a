"""Data: the one feature schema, the shapes world, seqio tasks, JSONL manifests, media I/O and
the host-side input pipeline."""
