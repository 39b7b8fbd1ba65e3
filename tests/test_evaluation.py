"""Evaluation statistics on hand-computable cases."""

import numpy as np
import pytest

from vla_pipeline.stats import mcnemar_exact_p, paired_comparison


def test_mcnemar_exact_p_values():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)  # 2 x (1/2)^5
    assert mcnemar_exact_p(1, 4) == pytest.approx(2 * 6 / 32)  # 2 x (C(5,0) + C(5,1)) / 2^5
    assert mcnemar_exact_p(3, 3) == 1.0  # capped
    assert mcnemar_exact_p(2, 9) == mcnemar_exact_p(9, 2)


def _rec(task, variation, success, steps, split="test"):
    return {"task": task, "variation_seed": 4242, "variation": variation, "split": split, "seed": variation,
            "success": success, "steps_to_success": steps if success else -1, "length": steps if success else 200}


def test_paired_comparison_counts_discordant_pairs_and_common_steps():
    base = [_rec("a", 0, True, 80), _rec("a", 1, False, 0), _rec("b", 0, True, 60), _rec("b", 1, True, 50)]
    new = [_rec("a", 0, True, 70), _rec("a", 1, True, 90), _rec("b", 0, False, 0), _rec("b", 1, True, 40)]
    out = paired_comparison(base, list(reversed(new)))  # order does not matter, the episode key does
    tasks = out["test"].pop("tasks")
    assert out["test"] == {"episodes": 4, "both_solved": 2, "only_base": 1, "only_new": 1, "neither": 0,
                           "success_diff": 0.0, "mcnemar_p": 1.0, "steps_diff_both_solved": -10.0}
    assert tasks["a"]["only_new"] == 1 and tasks["a"]["steps_diff_both_solved"] == -10.0
    assert tasks["b"]["only_base"] == 1 and tasks["b"]["success_diff"] == -0.5
    assert out["splits"] == ["test"] and out["skipped_splits"] == []


def test_paired_comparison_pairs_only_splits_both_evaluated():
    base = [_rec("a", 0, True, 5), _rec("a", 1, True, 5, split="validation")]
    new = [_rec("a", 1, False, 5, split="validation")]  # an intermediate round: validation only
    out = paired_comparison(base, new)
    assert out["splits"] == ["validation"] and out["skipped_splits"] == ["test"]
    assert out["validation"]["only_base"] == 1


def test_paired_comparison_refuses_different_lists():
    with pytest.raises(ValueError, match="different test episodes"):
        paired_comparison([_rec("a", 0, True, 5)], [_rec("a", 1, True, 5)])
    with pytest.raises(ValueError, match="share no split"):
        paired_comparison([_rec("a", 0, True, 5)], [_rec("a", 0, True, 5, split="train")])



def test_seed_table_calls_a_gain_real_only_when_positive_on_every_seed():
    from vla_pipeline.stats import seed_table

    def run(sft, final, only_new, only_base):
        metric = lambda s: {"test": {"success": s, "steps_to_success": 70.0, "success_ci95": [s - 0.05, s + 0.05]}}
        paired = {"test": {"only_new": only_new, "only_base": only_base, "mcnemar_p": 0.01,
                           "steps_diff_both_solved": -3.0}}
        return {"sft": metric(sft), "final": metric(final), "paired": paired}

    table = seed_table({"0": run(0.8, 0.9, 12, 2), "1": run(0.82, 0.86, 8, 4)})
    assert table["gain_positive_on_every_seed"] and table["mean_success_gain"] == pytest.approx(0.07)
    assert table["seeds"]["1"]["only_final"] == 8 and table["seeds"]["1"]["success_gain"] == pytest.approx(0.04)
    assert not seed_table({"0": run(0.8, 0.9, 12, 2), "2": run(0.85, 0.84, 3, 4)})["gain_positive_on_every_seed"]
    named = seed_table({"0": run(0.8, 0.9, 12, 2)}, "test", "r02")  # the report checks the table against eval-r02
    assert named["final"] == "r02" and named["seeds"]["0"]["final_success"] == 0.9
    with pytest.raises(ValueError, match="no test split"):
        seed_table({"0": {**run(0.8, 0.9, 1, 0), "final": {"validation": {}}}})


def test_position_errors_by_hand():
    """Object off by (3, 4, 12) cm and goal by (0, 0, 5) cm in one frame, exact in the other."""
    from vla_pipeline.readout import position_errors

    truths = np.zeros((2, 6))
    estimates = np.array([[0.03, 0.04, 0.12, 0.0, 0.0, 0.05], [0.0] * 6])
    errors = position_errors(estimates, truths)
    assert errors["object_xy"]["median_cm"] == pytest.approx(2.5)  # median of 5 and 0
    assert errors["object_xyz"]["p90_cm"] == pytest.approx(0.9 * 13.0)  # 13 and 0, interpolated
    assert errors["goal_xy"]["median_cm"] == 0.0
    assert errors["goal_xyz"]["bias_cm"] == pytest.approx([0.0, 0.0, 2.5])
