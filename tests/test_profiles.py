"""One profile table: Hypothesis runs the suite with it, the oracle and its CLI read their choices from it."""
import inspect

import pytest

from bnref import profiles
from bnref.oracle import PROFILES as ORACLE_EXAMPLES
from bnref.oracle import check
from bnref.oracle.cli import _parser


def test_registered_settings_follow_the_table():
    for name, row in profiles.PROFILES.items():
        got = profiles.hypothesis_settings(name)
        assert (got.max_examples, got.derandomize) == (row.max_examples, row.derandomize)
        assert (got.database is None) == (not row.database)
    assert profiles.hypothesis_settings("ci").derandomize


def test_the_oracle_takes_its_examples_and_choices_from_the_table():
    assert {name: ORACLE_EXAMPLES[name] for name in profiles.PROFILES} == \
        {name: row.max_examples for name, row in profiles.PROFILES.items()}
    assert ORACLE_EXAMPLES["default"] == profiles.PROFILES["dev"].max_examples
    choices = next(a.choices for a in _parser()._actions if a.dest == "profile")
    assert set(choices) == set(profiles.PROFILES) | set(profiles.ALIASES)
    assert inspect.signature(check).parameters["profile"].default == "dev"


def test_the_environment_picks_the_suite_profile(monkeypatch):
    monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert profiles.profile_from_environment() == "dev"
    monkeypatch.setenv("CI", "true")
    assert profiles.profile_from_environment() == "ci"
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "thorough")
    assert profiles.profile_from_environment() == "thorough"
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "nope")
    with pytest.raises(ValueError, match="unknown profile 'nope'; expected one of quick, ci, dev, thorough"):
        profiles.profile_from_environment()
