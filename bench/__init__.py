"""The apalis-cli benchmark: `python -m bench --backend sqlite` (see bench/README.md).

Not part of the test suite; it measures, beside raw drivers and peer queues in the same run.
"""
