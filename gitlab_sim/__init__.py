"""A GitLab API v4 simulator for tests, the benchmark and the demo.

Production code never imports this package. Entry points: `SimulatorServer` (background
thread, for tests), `generate_world` (seeded data), `World` (the thread-safe handle).
"""
