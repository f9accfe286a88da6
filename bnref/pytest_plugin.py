"""pytest plugin (entry point ``pytest11``): ``pytest --bnref-candidate module:attr``.

Adds one test per (dtype, oracle property) for the candidate to the session, next to
the user's own tests: ``bnref[float32-forward]``, ... A failure prints the worst
error against its tolerance, the shrunk example and its replay; a property whose
method the candidate does not provide is skipped. Without ``--bnref-candidate`` the
plugin adds nothing and imports nothing beyond this module.
"""
from __future__ import annotations

import pytest

from bnref import profiles
from bnref.dtypes import NAMES


def pytest_addoption(parser) -> None:
    group = parser.getgroup("bnref", "check a batch-norm implementation against bnref")
    group.addoption("--bnref-candidate", metavar="TARGET", default=None,
                    help="adapter name or module:attr of a bnref.oracle candidate to check")
    group.addoption("--bnref-dtype", action="append", choices=NAMES, default=None,
                    help="dtype to check (repeatable; default: every dtype the candidate supports)")
    group.addoption("--bnref-profile", default=profiles.DEFAULT, choices=(*profiles.PROFILES, *profiles.ALIASES),
                    help=f"examples per property, as bnref check --profile (default {profiles.DEFAULT})")
    group.addoption("--bnref-seed", type=int, default=0, help="Hypothesis seed for the oracle's cases")


class BnrefPropertyFailed(AssertionError):
    pass


class BnrefItem(pytest.Item):
    """One oracle property in one dtype, run through :func:`bnref.oracle.run_property`."""

    def __init__(self, *, prop, dtype, session_state, **kwargs):
        super().__init__(**kwargs)
        self.prop, self.dtype, self.state = prop, dtype, session_state

    def runtest(self) -> None:
        from bnref.oracle.check import run_property
        from bnref.oracle.report import FAIL, NOT_PROVIDED

        result = run_property(self.state["candidate"], self.prop, self.dtype, ctx=self.state["context"](),
                              max_examples=profiles.profile_named(self.state["profile"]).max_examples,
                              seed=self.state["seed"],
                              target=self.state["target"])
        if result.status == NOT_PROVIDED:
            pytest.skip(f"{self.state['target']} does not provide {', '.join(self.prop.requires)}")
        if result.status == FAIL:
            lines = [f"{self.prop.name} [{self.dtype}]: {self.prop.summary}", *result.failures]
            if result.case:
                lines += [f"minimal example: {result.case}", f"replay: {result.replay}"]
            raise BnrefPropertyFailed("\n".join(lines))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, BnrefPropertyFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"bnref oracle: {self.name}"


def pytest_collection_modifyitems(session, config, items) -> None:
    target = config.getoption("--bnref-candidate")
    if not target:
        return
    from bnref.oracle.check import TargetError, load_target
    from bnref.oracle.fingerprint import fingerprint
    from bnref.oracle.properties import PROPERTIES, Context

    try:
        candidate = load_target(target)
    except TargetError as exc:
        raise pytest.UsageError(f"--bnref-candidate: {exc}") from exc
    dtypes = config.getoption("--bnref-dtype") or list(candidate.dtypes)
    unsupported = [d for d in dtypes if d not in candidate.dtypes]
    if unsupported:
        raise pytest.UsageError(f"--bnref-dtype: {target} does not support {', '.join(unsupported)}")
    context = {}

    def shared_context():
        if "ctx" not in context:  # the fingerprint is measured once, by the first property that runs
            context["ctx"] = Context(candidate, fingerprint(candidate, dtypes[0]))
        return context["ctx"]

    state = {"candidate": candidate, "target": target, "context": shared_context,
             "profile": config.getoption("--bnref-profile"), "seed": config.getoption("--bnref-seed")}
    for dtype in dtypes:
        for prop in PROPERTIES:
            items.append(BnrefItem.from_parent(session, name=f"bnref[{dtype}-{prop.name}]", prop=prop,
                                               dtype=dtype, session_state=state))
