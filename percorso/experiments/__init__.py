"""Experiments: assignment, metrics and their statistics."""
