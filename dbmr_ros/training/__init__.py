"""Training internals of dbmr-train: one epoch of each stage (engine) and its plumbing (util)."""
