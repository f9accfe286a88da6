"""The oracle: check any batch-norm implementation against bnref.

``check(candidate) -> Report`` runs the properties of :mod:`bnref.oracle.properties`
with Hypothesis in the candidate's layout and dtypes, measures its conventions
(:mod:`bnref.oracle.fingerprint`), and reports the worst error against its
tolerance and a shrunk, replayable example for every failure. The candidate
protocol is in :mod:`bnref.oracle.protocol`; ``bnref check`` is :mod:`bnref.oracle.cli`.
"""
from bnref.oracle.check import PROFILES as PROFILES
from bnref.oracle.check import TargetError as TargetError
from bnref.oracle.check import check as check
from bnref.oracle.check import load_target as load_target
from bnref.oracle.check import replay as replay
from bnref.oracle.check import run_property as run_property
from bnref.oracle.fingerprint import Fingerprint as Fingerprint
from bnref.oracle.fingerprint import fingerprint as fingerprint
from bnref.oracle.properties import PROPERTIES as PROPERTIES
from bnref.oracle.protocol import Candidate as Candidate
from bnref.oracle.report import PropertyResult as PropertyResult
from bnref.oracle.report import Report as Report

__all__ = ["check", "run_property", "replay", "load_target", "fingerprint", "Candidate", "Report",
           "PropertyResult", "Fingerprint", "PROPERTIES", "PROFILES", "TargetError"]
