"""Running the CLI in-process, as a user would, for tests: exit code, stdout, stderr."""

from __future__ import annotations

import pytest

from l2bn.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err
