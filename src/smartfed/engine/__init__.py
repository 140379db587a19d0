"""The Flower-free engine: run configuration, the method interface, local training, loss
evaluation, seeding and the run directory. Methods build on it; the Flower apps call it."""
