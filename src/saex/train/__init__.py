"""Training sparse autoencoders on an activation store: the ensemble trainer, its config and checkpoints."""
