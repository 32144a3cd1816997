"""Training: mesh and sharding, optimizer, step functions, checkpoints and the loop."""
