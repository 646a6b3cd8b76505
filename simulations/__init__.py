"""One-machine federations: scenarios run through Flower's simulation engine."""
