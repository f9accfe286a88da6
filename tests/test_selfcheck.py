"""bnref selfcheck prints its table and passes; the CLI dispatches and reports usage errors."""
import io

from bnref import cli, selfcheck


def test_selfcheck_table_passes_and_shows_the_offset_row():
    out = io.StringIO()
    assert selfcheck.run(stream=out)
    text = out.getvalue()
    rows = [line for line in text.splitlines() if line.endswith("pass")]
    assert len(rows) == 2 * len(selfcheck.CASES)
    offset32 = next(line for line in rows if "offset-1e4" in line and "float32" in line)
    y_error = float(offset32.split()[-8])
    assert y_error < 1e-3


def test_cli_usage_and_unknown_command(capsys):
    assert cli.main(["--help"]) == 0
    assert "selfcheck" in capsys.readouterr().out
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert cli.main(["selfcheck"]) == 0
