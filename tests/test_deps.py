"""Every DVC stage depends on all the project code its command runs (and on the lock file).

A stage that misses a dep keeps a stale result after that code changes: `dvc repro` says
nothing to do while the current code would produce something else.
"""

import subprocess

import pytest
import yaml

from tests.conftest import ROOT, copy_git_files
from tests.stage_imports import format_report, missing_deps


@pytest.fixture(scope="module")
def probes() -> dict:
    return {}  # subcommand -> project files it loads, shared by the tests below


def test_every_stage_depends_on_every_module_its_command_imports(probes):
    report = missing_deps(ROOT, cache=probes)
    assert not report, "\n" + format_report(report) + "\n(add these paths to the stage's deps in dvc.yaml)"
    assert {"check-params", "collect-demos", "sft", "evaluate", "ppo", "snapshot", "compare"} <= probes.keys()
    assert all("vla_pipeline/config/params.py" in files for sub, files in probes.items() if sub not in ("compare", "offline-summary"))


def test_a_removed_dep_line_is_named(tmp_path, probes):
    """The check itself fails: drop `vla_pipeline/checkpoint.py` from `evaluate`'s deps."""
    copy_git_files(tmp_path)
    dvc_yaml = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    dvc_yaml["stages"]["evaluate"]["do"]["deps"].remove("vla_pipeline/checkpoint.py")
    dvc_yaml["stages"]["check_params"]["deps"].remove("requirements.lock")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # DVC opens a git repository
    report = missing_deps(tmp_path, cache=probes)
    assert report == {"evaluate@sft": ["vla_pipeline/checkpoint.py"], "evaluate@sft-offline": ["vla_pipeline/checkpoint.py"],
                      "check_params": ["requirements.lock"]}
    assert "stage 'evaluate@sft' runs code its deps do not list: vla_pipeline/checkpoint.py" in format_report(report)
