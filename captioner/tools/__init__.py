"""Offline commands: synthetic data, training, evaluation and model tools."""
