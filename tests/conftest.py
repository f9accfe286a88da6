"""Test configuration: Hypothesis profiles (HYPOTHESIS_PROFILE=quick|ci|dev|thorough, bnref.profiles)."""
from bnref.profiles import load_hypothesis_profile

load_hypothesis_profile()
