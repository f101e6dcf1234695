"""The sandbox: pure container specs (spec.py), engine I/O (docker.py, runner.py), images."""
