"""Every DVC stage depends on all the project code its command runs (and on the lock file).

A stage that misses a dep keeps a stale result after that code changes: `dvc repro` says
nothing to do while the current code would produce something else.
"""

import subprocess

import pytest
import yaml

from tests.conftest import ROOT, copy_git_files
from tests.stage_imports import extra_deps, format_report, missing_deps, resolved_stages, stage_module


@pytest.fixture(scope="module")
def probes() -> dict:
    return {}  # subcommand -> project files it loads, shared by the tests below


def test_every_stage_depends_on_every_module_its_command_imports(probes):
    report = missing_deps(ROOT, cache=probes)
    assert not report, "\n" + format_report(report) + "\n(add these paths to the stage's deps in dvc.yaml)"
    assert {"check_params", "collect_demos", "sft", "evaluate", "ppo", "snapshot", "compare"} <= probes.keys()
    assert all("vla_pipeline/config/params.py" in files for sub, files in probes.items() if sub not in ("compare", "offline_summary"))


def test_no_stage_lists_code_it_does_not_run(probes):
    """The other direction: a folder, or a module the stage never loads, would rerun the stage for
    an edit that cannot change its result (`python -m tests.stage_imports --write` fixes both)."""
    report = extra_deps(ROOT, cache=probes)
    assert not report, "\n".join(f"stage '{s}' lists code it does not run: {', '.join(d)}" for s, d in report.items())


def test_each_stage_depends_on_its_own_command_module_only():
    """Editing one stage's module reruns that stage (and what reads its outputs), nothing else."""
    for name, (cmd, deps) in resolved_stages(ROOT).items():
        own = {"stages/__init__.py", "stages/common.py", f"stages/{stage_module(cmd)}.py"}
        assert {d for d in deps if d.startswith("stages")} == own, name


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
                      "evaluate@sft-small": ["vla_pipeline/checkpoint.py"],
                      "check_params": ["requirements.lock"]}
    assert "stage 'evaluate@sft' runs code its deps do not list: vla_pipeline/checkpoint.py" in format_report(report)
