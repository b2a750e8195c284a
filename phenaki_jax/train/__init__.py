"""Training: the loop (`loop.train_and_evaluate`), preemption and the metric writers. Only the
commands import this package."""
