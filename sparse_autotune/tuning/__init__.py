"""Tuning: the tuner (render, compile, verify, time each candidate), the search, the problem loop, workers and their queue, suites, checkpoints. May import: core, device, store, errors, resources."""
