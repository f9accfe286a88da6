"""How many Hypothesis examples a run draws, as data: one table for the test suite and the oracle.

:data:`PROFILES` holds ``quick`` (a quick look), ``ci`` (derandomized: the same cases every
run), ``dev`` (the default) and ``thorough`` (before a release); ``python -m bnref.profiles``
prints it. The test suite registers every row with Hypothesis (:func:`register`) and loads
``$HYPOTHESIS_PROFILE``, else ``ci`` when ``$CI`` is set, else ``dev``
(:func:`load_hypothesis_profile`). The oracle (``bnref check --profile``, the pytest
plugin's ``--bnref-profile``) takes ``max_examples`` from the same row; its cases come
from its own ``--seed``, so ``derandomize`` does not apply there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Profile", "PROFILES", "ALIASES", "DEFAULT", "profile_named", "profile_from_environment",
           "register", "hypothesis_settings", "table",
           "load_hypothesis_profile"]


@dataclass(frozen=True)
class Profile:
    """One Hypothesis profile.

    Attributes:
        name: what ``$HYPOTHESIS_PROFILE`` and ``--profile`` take.
        max_examples: examples per test (per property and dtype in the oracle).
        derandomize: draw the same examples every run (a CI failure then reproduces locally).
        database: keep failing examples in Hypothesis' example database to replay them first next run.
        purpose: when to pick it, shown in ``bnref check --help``.
    """

    name: str
    max_examples: int
    derandomize: bool = False
    database: bool = True
    purpose: str = ""


#: name -> profile, fewest examples first
PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("quick", 8, purpose="a quick look"),
    Profile("ci", 20, derandomize=True, database=False, purpose="CI: the same cases every run"),
    Profile("dev", 50, purpose="the default"),
    Profile("thorough", 500, purpose="before a release"),
)}
#: other names accepted for a profile (``bnref check --profile default`` reads as ``dev``)
ALIASES: dict[str, str] = {"default": "dev"}
#: the profile of ``bnref check`` and of the suite outside CI
DEFAULT = "dev"


def profile_named(name: str) -> Profile:
    """The profile called ``name`` (or one of :data:`ALIASES`).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    try:
        return PROFILES[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}") from None


def profile_from_environment(default: str | None = None) -> str:
    """``$HYPOTHESIS_PROFILE``, else ``default``, else ``ci`` when ``$CI`` is set, else :data:`DEFAULT`.

    Raises:
        ValueError: the name chosen is not a profile.
    """
    name = os.environ.get("HYPOTHESIS_PROFILE") or default or ("ci" if os.environ.get("CI") else DEFAULT)
    profile_named(name)
    return name


def register() -> None:
    """Register every profile of :data:`PROFILES` with Hypothesis (the aliases not: ``default`` is Hypothesis' own).

    Deadlines are off (the first call of a kernel compiles it) and the size health checks are
    quiet (the batches are large on purpose).
    """
    from hypothesis import HealthCheck, settings

    quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
    # Hypothesis' own default, not the profile loaded now (under $CI that is Hypothesis' built-in "ci")
    base = settings.get_profile("default")
    for p in PROFILES.values():
        extra = {} if p.database else {"database": None}
        settings.register_profile(p.name, parent=base, max_examples=p.max_examples, derandomize=p.derandomize,
                                  deadline=None, print_blob=True, suppress_health_check=quiet, **extra)


def hypothesis_settings(profile: str):
    """The registered ``hypothesis.settings`` object for ``profile`` (a name of :data:`PROFILES` or an alias).

    Raises:
        ValueError: an unknown profile.
    """
    from hypothesis import settings

    name = profile_named(profile).name
    register()
    return settings.get_profile(name)


def load_hypothesis_profile(default: str | None = None) -> str:
    """Register the profiles and load the one :func:`profile_from_environment` names; returns its name.

    Raises:
        ValueError: an unknown profile name.
    """
    from hypothesis import settings

    name = profile_named(profile_from_environment(default)).name
    register()
    settings.load_profile(name)
    return name


def table() -> str:
    """:data:`PROFILES` as a text table (``python -m bnref.profiles``)."""
    from bnref._table import render

    yes = {True: "yes", False: "no"}
    return render(("profile", "max_examples", "derandomize", "database", "for"),
                  [(p.name, p.max_examples, yes[p.derandomize], yes[p.database], p.purpose) for p in PROFILES.values()],
                  align="<><<<")


if __name__ == "__main__":
    print(table())
