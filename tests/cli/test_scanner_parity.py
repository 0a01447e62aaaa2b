"""Every read command names the dangerous global in a pickle that is not a torch checkpoint."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ckptctl.cli.app import app
from tests import hostile

runner = CliRunner()


@pytest.mark.parametrize("case", hostile.NOT_CHECKPOINTS, ids=lambda c: c.name)
def test_validate_inspect_and_list_name_the_global(tmp_path, case):
    marker = tmp_path / "pwned"
    path = case.build(tmp_path / "d" / "epoch_00001.pt", marker)

    result = runner.invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1, result.output
    [row] = json.loads(result.stdout)["results"]
    assert row["status"] == "unsafe" and f"unsafe: references {case.reported}" in row["problems"]

    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 1 and f"unsafe: references {case.reported}" in result.stderr
    assert "Traceback" not in result.output

    result = runner.invoke(app, ["list", str(path.parent), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)["checkpoints"]
    assert row["status"] == "unsafe" and case.reported in row["error"]
    assert not marker.exists()
