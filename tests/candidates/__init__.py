"""Candidates for the oracle's robustness tests: each one misbehaves as a first attempt might."""
