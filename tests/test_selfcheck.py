"""bnref selfcheck prints its table and passes; the CLI dispatches and reports usage errors."""
import io

from bnref import cli, selfcheck
from bnref.dtypes import KERNEL_DTYPES, dtype_info


def test_selfcheck_table_passes_and_shows_the_offset_row():
    out = io.StringIO()
    assert selfcheck.run(stream=out)
    text = out.getvalue()
    rows = [line for line in text.splitlines() if line.endswith("pass")]
    assert len(rows) == len(KERNEL_DTYPES) * len(selfcheck.CASES)
    offset32 = next(line for line in rows if "offset-1e4" in line and "float32" in line)
    y_error = float(offset32.split()[-8])
    assert y_error < 1e-3


def test_cli_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "selfcheck" in capsys.readouterr().out
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli.main(["selfcheck"]) == 0


def test_selfcheck_replay_lines_run_as_printed(monkeypatch):
    """Each failing row prints a replay command; every one runs (offset-1e4 included) and passes on bnref."""
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from tests.mutants import AsBnref, DxMissingMeanTerm

    monkeypatch.setattr(selfcheck, "bnref", AsBnref(DxMissingMeanTerm))
    # in the half formats the dropped term is below the gradients' tolerance on some rows
    # (a few roundings of u = 2^-11 or 2^-8 of the scale): the rows of float32 and float64 only
    monkeypatch.setattr(selfcheck, "KERNEL_DTYPES", tuple(d for d in KERNEL_DTYPES if dtype_info(d).native))
    out = io.StringIO()
    assert not selfcheck.run(stream=out)
    lines = [line.split("replay: ", 1)[1] for line in out.getvalue().splitlines() if "  replay: " in line]
    assert len(lines) == 2 * len(selfcheck.CASES) and any("'offset-1e4'" in line for line in lines)
    codes = []
    for line in lines:
        argv = shlex.split(line)
        assert argv[:2] == ["python", "-c"], line
        codes.append(argv[2])
    root = Path(__file__).resolve().parents[1]
    driver = ("import sys\nfor code in sys.argv[1:]:\n    exec(compile(code, '<replay>', 'exec'), {})\n"
              "print('ran', len(sys.argv) - 1)")
    run = subprocess.run([sys.executable, "-c", driver, *codes], cwd=root, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=str(root)))
    assert run.returncode == 0, run.stderr
    assert f"ran {len(codes)}" in run.stdout
