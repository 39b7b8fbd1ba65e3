"""The README's adding-a-method checklist, followed once for a trivial method: `bc_only`, more
cloning of the demos from an SFT checkpoint (no RL). Nothing in `vla_pipeline/` or `stages/`
names it: its loop is built from `training.supervised`, its params section joins
`Params.RUN_SECTIONS`, the existing `evaluate` stage scores it, and the report lists it and pairs
it with its base from its config alone."""

import json

import pytest
from pydantic import Field, ValidationError

from tests.conftest import invoke, tiny_raw
from vla_pipeline.config import Params, ReportRow, Section
from vla_pipeline.report import build_report
from vla_pipeline.report.collect import planned_methods
from vla_pipeline.stats import paired_comparison, read_episode_records


# --- checklist 2: one params section (unknown keys fail), a dict of runs named like rounds
class BcOnlyRun(Section):
    policy_in: str  # the checkpoint it continues from
    steps: int = Field(4, ge=1)
    test: bool = False
    chain: str = "BC only"

    def report_row(self) -> ReportRow:
        return ReportRow(self.chain, self.policy_in, None)  # paired with where it started; no RL curve


class ParamsWithBcOnly(Params):
    RUN_SECTIONS = (*Params.RUN_SECTIONS, "bc_only_runs")
    bc_only_runs: dict[str, BcOnlyRun] = Field(default_factory=dict)


# --- checklist 1: its loop, from the others' parts; it writes its own checkpoint
def train_bc_only(checkpoint, demos, out, params, run: BcOnlyRun) -> None:
    from vla_pipeline.checkpoint import load_policy, save_policy
    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.data.windows import ChunkWindows
    from vla_pipeline.io import atomic_directory
    from vla_pipeline.training.supervised import train_on_windows

    policy = load_policy(checkpoint)
    table, _ = load_snapshot(demos)
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names)
    result = train_on_windows(policy, windows, params.sft.model_copy(update={"steps": run.steps}),
                              params.policy.aux_state_weight)
    with atomic_directory(out) as tmp:
        save_policy(policy, tmp, {"final_loss": result.final_loss})


def test_a_new_method_section_checks_its_keys_like_every_other():
    raw = tiny_raw(bc_only_runs={"bc1": {"policy_in": "sft", "stpes": 3}})
    with pytest.raises(ValidationError, match=r"bc_only_runs\.bc1\.stpes"):
        ParamsWithBcOnly.model_validate(raw)
    with pytest.raises(ValidationError, match="bc_only_runs"):
        Params.model_validate(raw)  # the project's own Params does not know the section


def test_a_new_method_followed_through_the_checklist_reaches_the_report(tmp_path, tiny_demos, tiny_checkpoint,
                                                                          tiny_params_file):
    params = ParamsWithBcOnly.model_validate(tiny_raw(bc_only_runs={"bc1": {"policy_in": "sft", "test": True}}))
    assert [m.name for m in planned_methods(params)][-1] == "bc1"  # after every run of the other methods
    train_bc_only(tiny_checkpoint, tiny_demos, tmp_path / "checkpoints" / "bc1", params, params.bc_only_runs["bc1"])
    # --- checklist 3: the existing evaluate stage, so it pairs with SFT on the same episodes
    metrics = tmp_path / "metrics"
    for name, checkpoint in (("sft", tiny_checkpoint), ("bc1", tmp_path / "checkpoints" / "bc1")):
        result = invoke(["evaluate", "--params", str(tiny_params_file), "--checkpoint", str(checkpoint),
                         "--name", name, "--splits", "test,validation", "--metrics", str(metrics / f"eval-{name}.json"),
                         "--table", str(metrics / f"eval-{name}-tasks.json"),
                         "--episodes", str(metrics / f"episodes-{name}.json")])
        assert result.exit_code == 0, result.output
    # --- checklist 4: the report lists it under the family its config names, paired with its base
    summary = build_report(metrics, tmp_path / "videos", params, tmp_path / "report")
    assert summary["methods"] == ["sft", "bc1"]
    markdown = (tmp_path / "report" / "summary.md").read_text()
    cells = next([c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines()
                 if line.startswith("| bc1 |"))
    assert cells[1] == "BC only" and cells[6:8] == ["sft", "test"]  # its family and base, from its config
    paired = paired_comparison(read_episode_records(metrics / "episodes-sft.json"),
                               read_episode_records(metrics / "episodes-bc1.json"))["test"]
    assert cells[9] == f"{paired['only_new']} / {paired['only_base']}"  # paired with sft on the same episodes
    headline = json.loads((tmp_path / "report" / "headline" / "bc1.json").read_text())
    assert set(headline) == {"test", "validation"}
