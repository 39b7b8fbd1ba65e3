"""Versioning as a user runs it, on tiny params: share a run through the DVC remote, go back
to an earlier round, run and compare experiments, and never lose an output to a bad param.

The tests run in file order on one copy of the session's tiny `dvc repro` (tests/conftest.py):
    r01 committed -> bad params -> queued experiments, one applied and committed (r01 again)
    -> r02 added and committed -> back to the first r01 -> clone elsewhere.
"""

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_tiny_pipeline, run_cmd
from tests.stage_imports import covered, resolved_stages

pytestmark = pytest.mark.slow

DVC = [sys.executable, "-m", "dvc"]
VERSIONED = ("checkpoints", "buffers", "rollouts", "videos", "checks")  # every cached output under data/


def run(cmd, cwd, env, check=True):
    return run_cmd(cmd, cwd, env, check=check, timeout=1200)


def outputs(repo: Path, *kinds: str) -> dict[str, bytes]:
    """Every file of the cached outputs, by repository-relative path."""
    return {str(p.relative_to(repo)): p.read_bytes()
            for kind in (kinds or VERSIONED) for p in sorted((repo / "data" / kind).rglob("*")) if p.is_file()}


def ran(stdout: str) -> list[str]:
    return sorted(line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage"))


def set_params(repo: Path, **sections) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def state(tiny_pipeline, tmp_path_factory):
    """The shared tiny run, copied, with a default remote outside it (scripts/remote.sh, as
    setup does), r01 committed and pushed."""
    base = tmp_path_factory.mktemp("versions")
    repo, env = copy_tiny_pipeline(tiny_pipeline, base / "repo")
    remote = base / "remote"
    run(["bash", "scripts/remote.sh"], repo,
        dict(env, VLA_DVC_REMOTE=str(remote), DVC=str(Path(sys.executable).parent / "dvc")))
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "r01"], repo, env)
    run([*DVC, "push"], repo, env)
    r01 = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    return {"base": base, "repo": repo, "env": env, "remote": remote, "r01": r01, "r01_files": outputs(repo),
            "modules": tiny_pipeline["modules"]}


def test_setup_remote_is_outside_the_tree_and_kept(state):
    repo, env = state["repo"], state["env"]
    dvc_bin = str(Path(sys.executable).parent / "dvc")
    listed = run([*DVC, "remote", "list"], repo, env).stdout.split()
    assert listed == ["vla-local", str(state["remote"]), "(default)"]
    assert "vla-local" in (repo / ".dvc" / "config.local").read_text()  # per machine, not in git
    kept = run(["bash", "scripts/remote.sh"], repo, dict(env, DVC=dvc_bin))  # rerun: keeps the default
    assert str(state["remote"]) in kept.stderr
    inside = run(["bash", "scripts/remote.sh"], repo, dict(env, DVC=dvc_bin, VLA_DVC_REMOTE=str(repo / "store")),
                 check=False)
    assert inside.returncode == 1 and "inside the working tree" in inside.stderr
    assert any(state["remote"].rglob("*")), "dvc push wrote nothing to the remote"


def test_nothing_to_do_and_each_stage_depends_on_the_code_it_ran(state):
    repo, env = state["repo"], state["env"]
    assert list(repo.rglob("__pycache__")), "the run should have written bytecode beside the sources"
    assert ran(run([*DVC, "repro"], repo, env).stdout) == []  # bytecode in directory deps changes nothing
    assert "Data and pipelines are up to date" in run([*DVC, "status"], repo, env).stdout
    loaded: dict[str, set] = {}
    for record in state["modules"].glob("*.txt"):
        loaded.setdefault(record.name.rsplit(".", 2)[0], set()).update(record.read_text().split())
    stages = resolved_stages(repo)
    assert set(loaded) == set(stages)  # every stage ran once in the shared run and was recorded
    missing = {name: sorted(f for f in loaded[name] if not covered(f, deps)) for name, (_, deps) in stages.items()}
    assert not any(missing.values()), f"modules a stage loaded at run time but does not depend on: {missing}"


@pytest.mark.parametrize("section, values, key", [("sft", {"steps": 0}, "sft.steps"),
                                                  ("ppo", {"minibatch_size": 64}, "minibatch_size (64)")])
def test_a_bad_param_stops_repro_before_any_output_is_deleted(state, section, values, key):
    repo, env = state["repo"], state["env"]
    before = outputs(repo), {p.name: p.read_bytes() for p in (repo / "data" / "metrics").glob("*.json")}
    set_params(repo, **{section: values})
    proc = run([*DVC, "repro"], repo, env, check=False)
    assert proc.returncode != 0 and key in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert ran(proc.stdout) == ["check_params"]
    after = outputs(repo), {p.name: p.read_bytes() for p in (repo / "data" / "metrics").glob("*.json")}
    checks = "data/checks/params.ok"  # the check stage's own stamp is the only casualty
    assert {k: v for k, v in after[0].items()} == {k: v for k, v in before[0].items() if k != checks}
    assert after[1] == before[1]  # uncached metrics (train-sft.json, eval-*.json) untouched
    run(["git", "checkout", "--", "params.yaml"], repo, env)
    assert ran(run([*DVC, "repro"], repo, env).stdout) == []  # the stamp comes back from the run-cache
    assert outputs(repo) == before[0]


def exp_table(repo: Path, env: dict) -> list[dict]:
    """`dvc exp show` as a user reads it: the swept param, test success and steps per experiment."""
    shown = run([*DVC, "exp", "show", "--csv", "--drop", ".*", "--keep",
                 r"Experiment$|ppo\.lr$|.*headline/r\d+\.json:validation\.(success|steps)$"],
                repo, env).stdout
    return [row for row in csv.DictReader(io.StringIO(shown)) if row["Experiment"]]


def test_queued_experiments_show_apply_and_plots_diff(state):
    repo, env = state["repo"], state["env"]
    # 1e-5 is the committed value: DVC restores that one from its run-cache, only 3e-5 trains.
    run([*DVC, "exp", "run", "--queue", "-S", "ppo.lr=1e-5,3e-5"], repo, env)
    run([*DVC, "exp", "run", "--run-all"], repo, env)
    rows = exp_table(repo, env)
    assert sorted(float(r["ppo.lr"]) for r in rows) == [1e-5, 3e-5]
    success, steps = (f"data/report/headline/r01.json:validation.{k}" for k in ("success", "steps"))
    for row in rows:  # the report's headline columns for each experiment (steps: none if nothing solved)
        assert 0.0 <= float(row[success]) <= 1.0
        assert row[steps] in ("", "-") or 1.0 <= float(row[steps]) <= 100.0
    best = sorted(rows, key=lambda r: (-float(r[success]), r["Experiment"]))[0]
    run([*DVC, "exp", "apply", best["Experiment"]], repo, env)
    assert float(yaml.safe_load((repo / "params.yaml").read_text())["ppo"]["lr"]) == float(best["ppo.lr"])
    applied = json.loads((repo / "data/metrics/eval-r01.json").read_text())["validation"]["success"]
    assert applied == float(best[success])
    assert ran(run([*DVC, "repro"], repo, env).stdout) == []  # the applied outputs match its lock
    lr3 = [r["Experiment"] for r in rows if float(r["ppo.lr"]) == 3e-5][0]
    run([*DVC, "exp", "apply", lr3], repo, env)  # a changed round: other bytes than the committed r01
    assert outputs(repo, "checkpoints") != {k: v for k, v in state["r01_files"].items() if "checkpoints" in k}
    assert ran(run([*DVC, "repro"], repo, env).stdout) == []

    names = [r["Experiment"] for r in rows]
    plots = run([*DVC, "plots", "diff", *names, "--json"], repo, env).stdout
    curves = json.loads(plots)["data"]["data/metrics/train-r01.json"]
    assert sorted(curves[0]["revisions"]) == sorted(names)
    html = run([*DVC, "plots", "diff", *names, "-o", str(state["base"] / "plots")], repo, env)
    page = (state["base"] / "plots" / "index.html").read_text()
    assert "index.html" in html.stdout and all(name in page for name in names) and "success_rate" in page

    run(["git", "add", "-A"], repo, env)  # keep it: the second version of round r01
    run(["git", "commit", "-qm", "r01 with ppo.lr 3e-5"], repo, env)
    run([*DVC, "push"], repo, env)


def test_going_back_to_round_r01_after_r02_is_committed(state):
    """History: r01 -> r01 again (ppo.lr 3e-5, applied experiment) -> r02 added."""
    repo, env = state["repo"], state["env"]
    round1 = ("data/checkpoints/r01/", "data/buffers/r01/")
    pick = lambda files: {k: v for k, v in files.items() if k.startswith(round1)}  # noqa: E731
    second_r01 = pick(outputs(repo))
    assert second_r01 and second_r01 != pick(state["r01_files"])
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["rounds"]["r02"] = {"policy_in": "r01", "buffer_in": "r01", "base": "sft"}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # Adding a round runs only that round (and the params check, and the report that lists it).
    assert ran(run([*DVC, "repro"], repo, env).stdout) == ["check_params", "compare_round@r02", "evaluate_round@r02",
                                                          "ppo@r02", "report", "snapshot@r02"]
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "r02"], repo, env)
    run([*DVC, "push"], repo, env)
    r02_files = outputs(repo)

    listing = run([sys.executable, "-m", "stages.tools", "versions"], repo, env).stdout
    assert "ppo.lr: 1e-05 -> " in listing and "rounds.r02.policy_in: (none) -> 'r01'" in listing
    records = json.loads(run([sys.executable, "-m", "stages.tools", "versions", "--json"], repo, env).stdout)
    history = run(["git", "log", "--reverse", "--format=%H", "--", "dvc.lock"], repo, env).stdout.split()
    assert [r["commit"] for r in records] == history and len(history) == 3 and history[0] == state["r01"]
    second, latest = ({(o["kind"], o["name"]): o for o in r["outputs"]} for r in records[1:])
    assert second[("checkpoint", "r01")]["changed"] and not second[("checkpoint", "sft")]["changed"]
    assert not latest[("checkpoint", "r01")]["changed"] and latest[("checkpoint", "r02")]["changed"]
    assert latest[("checkpoint", "r02")]["inputs"] == {"policy_in": "r01", "buffer_in": "r01", "base": "sft"}
    # r02 is not marked `test: true`, so its listed result is the validation split's.
    assert latest[("buffer", "r02")]["split"] == "validation" and latest[("buffer", "r02")]["success"] is not None
    assert latest[("checkpoint", "sft")]["split"] == "test"

    run(["git", "checkout", "-q", state["r01"]], repo, env)
    run([*DVC, "checkout"], repo, env)
    assert pick(outputs(repo)) == pick(state["r01_files"])  # the first r01, byte for byte
    assert "Data and pipelines are up to date" in run([*DVC, "status"], repo, env).stdout
    run(["git", "checkout", "-q", "main"], repo, env)
    run([*DVC, "checkout"], repo, env)
    assert outputs(repo) == r02_files and pick(r02_files) == second_r01
    state["r02_files"] = r02_files


def test_push_clone_pull_is_byte_identical_and_needs_no_rerun(state):
    repo, env = state["repo"], state["env"]
    clone = state["base"] / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], state["base"], env)
    clone_env = dict(env, PYTHONPATH=str(clone))
    run(["bash", "scripts/remote.sh"], clone,
        dict(clone_env, VLA_DVC_REMOTE=str(state["remote"]), DVC=str(Path(sys.executable).parent / "dvc")))
    run([*DVC, "pull"], clone, clone_env)
    assert outputs(clone) == state["r02_files"]  # every checkpoint, buffer, rollout and video
    assert "Data and pipelines are up to date" in run([*DVC, "status"], clone, clone_env).stdout
    assert ran(run([*DVC, "repro"], clone, clone_env).stdout) == []
    # An earlier round on the other machine: its objects come from the remote.
    run(["git", "checkout", "-q", state["r01"]], clone, clone_env)
    run([*DVC, "pull"], clone, clone_env)
    r01 = {k: v for k, v in outputs(clone).items() if not k.startswith(("data/checkpoints/r02/", "data/buffers/r02/",
                                                                         "data/rollouts/r02/", "data/videos/r02/"))}
    assert r01 == state["r01_files"]
    shutil.rmtree(clone)
