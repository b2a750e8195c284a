"""ml_collections config files: `--config=configs/<stage>.py:variant=<name>`."""
