"""Scale-out: Ray env workers and data-parallel updates on 2 gloo ranks (README, "Past one machine").

Everything that opens a socket runs inside a private network namespace with only loopback up
(`unshare`), so Ray and gloo cannot reach any other address: Ray binds the machine's interface
address even when told 127.0.0.1.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from conftest import ROOT, tiny_data_root, tiny_raw

pytestmark = pytest.mark.slow  # minutes of Ray and torchrun start-ups: CI runs them (`-m slow`)

LOOPBACK_ENV = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0"}


def in_private_network(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run cmd in a new user + network namespace whose only interface is loopback."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("these tests need `unshare` (util-linux) and `ip` (iproute2) to isolate the network")
    script = "ip link set lo up && exec " + shlex.join(map(str, cmd))
    env = dict(os.environ, **LOOPBACK_ENV, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "sh", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def torchrun(ranks: int, *args, module: bool = True) -> list:
    """torchrun on this machine, its rendezvous on loopback: `-m module args` or `script args`."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", "29533", *(["-m"] if module else []), *args]


def test_ray_env_workers_step_the_episodes_of_in_process_envs(tmp_path):
    out = tmp_path / "ray.json"
    in_private_network([sys.executable, ROOT / "tests" / "ray_collect_check.py", out], tmp_path)
    report = json.loads(out.read_text())
    assert report["episodes"] >= 2  # episodes ended and their envs were reset during the check
    assert report["differences"] == {"ray, 1 env(s) per worker": [], "ray, 2 env(s) per worker": []}


def _params_file(root: Path, **overrides) -> Path:
    raw = tiny_raw(**overrides)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _max_weight_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float(np.max(np.abs(wa[k].astype(np.float64) - wb[k]))) if wa[k].size else 0.0 for k in wa)


def test_sft_on_two_gloo_ranks_takes_the_one_rank_steps(tmp_path, tiny_demos):
    """The same global batches (with random shifts) split over 2 ranks: the same losses and weights."""
    params = _params_file(tmp_path, sft={"steps": 10, "log_every": 1, "augment_shift": 2})
    outputs = {}
    for ranks in (1, 2):
        out, curve = tmp_path / f"sft-{ranks}", tmp_path / f"curve-{ranks}.json"
        args = ["stages.sft", "--params", params, "--demos", tiny_demos, "--out", out, "--curve", curve]
        in_private_network(torchrun(ranks, *args) if ranks > 1 else [sys.executable, "-m", *args], tmp_path)
        outputs[ranks] = out, json.loads(curve.read_text())
    (one, curve_one), (two, curve_two) = outputs[1], outputs[2]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    losses_one, losses_two = [r["loss"] for r in curve_one], [r["loss"] for r in curve_two]
    assert len(losses_one) == 10
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-5)
    # Float sums run in another order on 2 ranks; AdamW's normalised step turns those 1e-7
    # differences into up to ~2e-5 on parameters whose gradient is near 0 (10 steps of <= 3e-4 each).
    assert _max_weight_difference(one, two) < 1e-4


def test_ppo_minibatch_gradient_on_two_gloo_ranks_is_the_one_rank_gradient(tmp_path, tiny_demos, tiny_checkpoint):
    """Rank 0's rollouts, each rank's half of a PPO + self-BC minibatch: the averaged gradient is
    the whole minibatch's gradient (value-only warm-up loss and the full loss)."""
    results = {}
    for ranks in (1, 2):
        out = tmp_path / f"grad-{ranks}.npz"
        in_private_network(torchrun(ranks, ROOT / "tests" / "ppo_gradient_check.py", tiny_checkpoint, tiny_demos, out,
                                    module=False), tmp_path)
        results[ranks] = dict(np.load(out))
    one, two = results[1], results[2]
    for name in ("value", "full"):
        assert one[f"{name}_loss"] == pytest.approx(float(two[f"{name}_loss"]), rel=1e-5)
        assert one[f"{name}_bc_loss"] == pytest.approx(float(two[f"{name}_bc_loss"]), rel=1e-5)
        assert np.abs(one[f"{name}_gradient"]).max() > 0
        np.testing.assert_allclose(two[f"{name}_gradient"], one[f"{name}_gradient"], rtol=1e-4, atol=1e-7)


def test_ppo_round_under_torchrun_writes_one_round(tmp_path, tiny_demos, tiny_checkpoint):
    """The `ppo` stage on 2 ranks: rank 0 alone steps the envs and writes; the round's rollouts
    (collected before any update) and the critic warm-up iteration match the one-rank round."""
    raw = tiny_raw(ppo={"iterations": 2, "critic_warmup_iterations": 1})
    results = {}
    for ranks in (1, 2):
        root = tmp_path / f"ranks-{ranks}"
        root.mkdir()
        data, params = tiny_data_root(root, tiny_demos, tiny_checkpoint, raw)
        args = ["stages.ppo", "--round", "r01", "--data", data, "--params", params]
        in_private_network(torchrun(ranks, *args) if ranks > 1 else [sys.executable, "-m", *args], root)
        results[ranks] = data
    one, two = results[1], results[2]
    curve_one = json.loads((one / "metrics" / "train-r01.json").read_text())
    curve_two = json.loads((two / "metrics" / "train-r01.json").read_text())
    assert [r["episodes"] for r in curve_two] == [r["episodes"] for r in curve_one] and len(curve_one) == 2
    for key in ("policy_loss", "value_loss", "ratio_mean", "approx_kl"):
        assert curve_two[0][key] == pytest.approx(curve_one[0][key], rel=1e-5, abs=1e-9)
    assert sorted(p.name for p in (two / "checkpoints" / "r01").iterdir()) == \
        sorted(p.name for p in (one / "checkpoints" / "r01").iterdir())
    assert sorted(p.name for p in (two / "rollouts" / "r01").iterdir()) == \
        sorted(p.name for p in (one / "rollouts" / "r01").iterdir())


def test_an_unreachable_ray_cluster_is_one_clear_error_at_once():
    from vla_pipeline.config import RayConfig
    from vla_pipeline.envs.ray_vector import start_ray
    from vla_pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="no Ray cluster answers at 127.0.0.1:9"):
        start_ray(RayConfig(address="127.0.0.1:9"), 2)  # loopback port 9 (discard): nothing listens
    with pytest.raises(PipelineError, match="must be 'auto' or host:port"):
        start_ray(RayConfig(address="my-cluster"), 2)


def test_ray_settings_are_validated_with_the_other_params():
    from vla_pipeline.config import parse_params
    from vla_pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="env.ray.envs_per_worker"):
        parse_params(tiny_raw(env={"vector": "ray", "ray": {"envs_per_worker": 0}}), "params.yaml")
    with pytest.raises(PipelineError, match="adress"):
        parse_params(tiny_raw(env={"vector": "ray", "ray": {"adress": "auto"}}), "params.yaml")


def test_worker_slices_deal_consecutive_envs():
    from vla_pipeline.envs.ray_vector import worker_slices

    assert worker_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert worker_slices(2, 1) == [slice(0, 1), slice(1, 2)]


def test_rank_blocks_cover_a_batch_once():
    from vla_pipeline.distributed import block

    assert [block(64, r, 2) for r in range(2)] == [slice(0, 32), slice(32, 64)]
    assert [block(5, r, 2) for r in range(2)] == [slice(0, 2), slice(2, 5)]
    assert block(7, 0, 1) == slice(0, 7)


def test_a_ranks_block_gets_the_shifts_of_the_whole_batch():
    import torch

    from vla_pipeline.training.behaviour_cloning import random_shift

    pixels = torch.rand(6, 2, 3, 12, 12, generator=torch.Generator().manual_seed(0))  # 6 rows, 2 cameras
    whole = random_shift(pixels, 3, torch.Generator().manual_seed(5))
    for part in (slice(0, 3), slice(3, 6)):
        block = random_shift(pixels[part], 3, torch.Generator().manual_seed(5), (part, 6))
        assert torch.equal(block, whole[part])


def test_a_one_process_stage_refuses_to_run_as_torchrun_ranks(tmp_path, monkeypatch):
    from tests.conftest import invoke

    monkeypatch.setenv("WORLD_SIZE", "2")
    result = invoke(["check-params", "--params", str(_params_file(tmp_path))])
    assert result.exit_code == 1
    assert "'check-params' runs on one rank; start it without torchrun (data-parallel stages: sft, ppo)" in result.output
