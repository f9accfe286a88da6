"""Test configuration: Hypothesis profiles (HYPOTHESIS_PROFILE=ci|dev|thorough)."""
from bnref.testing import load_hypothesis_profile

load_hypothesis_profile()
