"""Coordinator: the Flower ServerApp, its round loop, ledger, checkpoints and reports."""
