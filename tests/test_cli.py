"""The top-level ``phasewatch`` command: dispatch, error reporting and exit statuses."""

from __future__ import annotations

import pytest

from phasewatch.cli import main


def test_an_unknown_option_is_reported_with_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", "metrics.csv", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: phasewatch replay" in err
    assert "unrecognized arguments: --bogus" in err


def test_file_errors_name_the_deepest_command_and_exit_2(tmp_path, capsys):
    # A directory where a file is expected is an OSError other than FileNotFoundError.
    assert main(["dashboards", "export", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phasewatch dashboards export: error:")
    assert "Traceback" not in err


def test_no_command_prints_help_with_exit_statuses(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "exit status:" in out and "130" in out
