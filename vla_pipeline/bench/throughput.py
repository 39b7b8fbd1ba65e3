"""Throughput benchmark (`stages bench`): raw MetaWorld, the chunk collector, SFT and PPO updates, in one run.

What it answers: how far the rollout path (vector env + `ChunkCollector`, the policy's
inference included) is from the simulator's own speed at the same render schedule, what
larger chunks and a second env worker buy, and how fast SFT and the PPO update consume
samples. Everything runs on the tasks, cameras, image size and render settings of `params`.

Each measurement runs in its own spawned child process (never fork: a forked worker hangs on
its first EGL render), so that its peak memory is its own and one measurement's caches do not
speed up the next. Inside the child, setup and a short warm-up come first, then `repeats`
timed repeats; each figure is their median, with the raw values kept beside it.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from vla_pipeline.bench.jobs import _collector_job, _demos_job, _ppo_job, _raw_job, _sft_job
from vla_pipeline.bench.measure import (
    ENV_STEPS_PER_S, SAMPLES_PER_S, _measure, _Planned, _run_in_child, _sig, _summary_line, machine_facts,
)
from vla_pipeline.config import Params
from vla_pipeline.errors import PipelineError

DEFAULT_OUT = Path("data/metrics/bench.json")
CHUNK_LENS = (1, 4, 8)  # K: actions per decision, and the raw loop's render period
NUM_ENVS = (1, 2)  # env workers of the collector (sync: envs stepped in turn in one process)
VECTOR_MODES = ("sync", "async")  # the project's vector-env backends (envs/vector.py)


@dataclass(frozen=True)
class BenchSizes:
    """How much work each measurement does. The defaults aim at ~10-15 min for the whole run
    on 2 CPU cores with params.yaml (MT10, 84 px); a third or more of that is setup (process
    start, MetaWorld and renderer construction), which is why the timed repeats stay short."""

    repeats: int = 3  # timed repeats per figure (the figure is their median)
    raw_steps: int = 1500  # env steps per repeat of the raw MetaWorld loop
    collector_steps: int = 500  # env steps (at least) per repeat of the chunk collector, over all envs
    sft_steps: int = 20  # SFT optimizer steps per repeat
    sft_batch_size: Optional[int] = None  # None: sft.batch_size
    ppo_decisions: int = 128  # decisions (chunks) in the PPO rollout batch that each repeat updates on
    demo_episodes: int = 3  # expert episodes per task when no demo snapshot is given
    seed: int = 0

    def __post_init__(self):
        for name, value in asdict(self).items():
            low = 0 if name == "seed" else 1
            if value is not None and (not isinstance(value, int) or value < low):
                raise PipelineError(f"bench: {name} must be an integer >= {low}, got {value!r}")
        if self.ppo_decisions < 2:
            raise PipelineError("bench: ppo_decisions must be >= 2 (PPO skips minibatches of one decision)")


# ----------------------------------------------------------------------------- names and ratios


def raw_name(chunk_len: int) -> str:
    return f"raw-k{chunk_len}"


def collector_name(vector: str, num_envs: int, chunk_len: int) -> str:
    return f"collector-{vector}-n{num_envs}-k{chunk_len}"


def measurement_names() -> list[str]:
    """Every figure one run writes, in the order it measures them."""
    names = [raw_name(k) for k in CHUNK_LENS]
    names += [collector_name(v, n, k) for v in VECTOR_MODES for n in NUM_ENVS for k in CHUNK_LENS]
    return names + ["sft", "ppo-update"]


def compute_ratios(measurements: dict[str, dict]) -> dict:
    """The ratios of medians the benchmark is for:

    - collector_over_raw_k4: what the rollout path (inference, vector env, episode bookkeeping)
      keeps of the simulator's speed at K = 4, per collector configuration;
    - k8_over_k1: what 8-action chunks buy over single actions (fewer renders and decisions);
    - n2_over_n1: what a second env worker buys, per backend and K.
    """
    med = lambda name: measurements[name]["median"]  # noqa: E731
    collectors = [f"{v}-n{n}" for v in VECTOR_MODES for n in NUM_ENVS]
    return {
        "collector_over_raw_k4": {c: _sig(med(f"collector-{c}-k4") / med(raw_name(4))) for c in collectors},
        "k8_over_k1": {"raw": _sig(med(raw_name(8)) / med(raw_name(1))),
                       **{c: _sig(med(f"collector-{c}-k8") / med(f"collector-{c}-k1")) for c in collectors}},
        "n2_over_n1": {f"{v}-k{k}": _sig(med(collector_name(v, 2, k)) / med(collector_name(v, 1, k)))
                       for v in VECTOR_MODES for k in CHUNK_LENS},
    }


# ----------------------------------------------------------------------------- the run


def bench_params(params: Params) -> Params:
    """The params every measurement runs with: the training horizon (as PPO rounds step), and
    the first train seed's 50 configurations only. Placements do not change the speed, but each
    further (task, seed) pair costs ~1 s of MetaWorld construction per process, which a short
    benchmark would count as stepping time."""
    from vla_pipeline.training.ppo.trainer import training_env_config

    env = training_env_config(params).model_copy(update={"train_seeds": list(params.env.train_seeds[:1])})
    return params.model_copy(update={"env": env})


def run_bench(params: Params, out: str | Path = DEFAULT_OUT, sizes: Optional[BenchSizes] = None,
              demos: Optional[str | Path] = None) -> dict:
    """Measure everything, write the JSON atomically to `out`, and return it.

    `demos`: an existing demo snapshot for the SFT and PPO measurements (its cameras and image
    size must match `params`); None collects `sizes.demo_episodes` expert episodes per task
    into a temporary directory first.
    """
    from vla_pipeline.io import write_json_atomic

    sizes = sizes or BenchSizes()
    bench = bench_params(params)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if demos is None:
            demos_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vla-bench-"))) / "demos"
        else:
            demos_dir = Path(demos)
            _check_demos(demos_dir, bench)
        plan = _plan(bench, sizes, demos_dir)
        bar = stack.enter_context(tqdm(total=len(plan) + (demos is None), desc="bench", unit="run",
                                       dynamic_ncols=True))
        if demos is None:
            bar.set_postfix_str("collecting demos")
            _run_in_child("demos", _demos_job, params_raw=bench.model_dump(), out_dir=str(demos_dir),
                          episodes=sizes.demo_episodes)
            bar.update()
        measurements = {}
        for item in plan:
            bar.set_postfix_str(item.name)
            measurements[item.name] = _measure(item)
            tqdm.write(_summary_line(item.name, measurements[item.name]))
            bar.update()
    result = {
        "machine": machine_facts(params),
        "env": _env_facts(bench),
        "settings": _settings(bench, sizes, demos),
        "measurements": measurements,
        "ratios": compute_ratios(measurements),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out, result)
    return result


def _plan(bench: Params, sizes: BenchSizes, demos_dir: Path) -> list[_Planned]:
    raw = bench.model_dump()
    common = {"params_raw": raw, "repeats": sizes.repeats, "seed": sizes.seed}
    plan = [_Planned(raw_name(k), _raw_job, {**common, "chunk_len": k, "steps": sizes.raw_steps}, ENV_STEPS_PER_S,
                     {"kind": "raw", "chunk_len": k, "actions": "uniform random", "envs": 1})
            for k in CHUNK_LENS]
    plan += [_Planned(collector_name(v, n, k), _collector_job,
                      {**common, "chunk_len": k, "vector": v, "num_envs": n, "steps": sizes.collector_steps},
                      ENV_STEPS_PER_S, {"kind": "collector", "chunk_len": k, "vector": v, "num_envs": n,
                                        "torch_threads": 1})
             for v in VECTOR_MODES for n in NUM_ENVS for k in CHUNK_LENS]
    batch = sizes.sft_batch_size or bench.sft.batch_size
    plan.append(_Planned("sft", _sft_job, {**common, "demos": str(demos_dir), "steps": sizes.sft_steps,
                                           "batch_size": batch}, SAMPLES_PER_S,
                         {"kind": "sft", "steps": sizes.sft_steps, "batch_size": batch,
                          "torch_threads": bench.sft.num_threads, "sample": "one (frame, chunk) window"}))
    plan.append(_Planned("ppo-update", _ppo_job, {**common, "demos": str(demos_dir),
                                                  "decisions": sizes.ppo_decisions}, SAMPLES_PER_S,
                         {"kind": "ppo", "decisions": sizes.ppo_decisions, "epochs": bench.ppo.epochs,
                          "minibatch_size": min(bench.ppo.minibatch_size, sizes.ppo_decisions),
                          "torch_threads": bench.ppo.num_threads, "target_kl": None,
                          "sample": "one decision in a PPO minibatch (its self-BC batch, if any, is not counted)"}))
    return plan


def _check_demos(path: Path, bench: Params) -> None:
    """A given snapshot must hold the frames and tasks the policy is built for (read from its
    manifest, before any measurement starts)."""
    from vla_pipeline.data.schema import FrameLayout
    from vla_pipeline.data.snapshot import read_manifest, snapshot_layout
    from vla_pipeline.envs.tasks import resolve_tasks

    manifest = read_manifest(path)
    found, wanted = snapshot_layout(manifest), FrameLayout.of_env(bench.env)
    if found != wanted:
        raise PipelineError(f"{path} holds cameras {list(found.cameras)} at {found.image_shape[0]} px; the params ask "
                            f"for env.cameras {list(wanted.cameras)} at {wanted.image_shape[0]} px")
    if set(manifest["tasks"]) != set(resolve_tasks(bench.env)):
        raise PipelineError(f"{path} holds demos of tasks {sorted(manifest['tasks'])}; the params' tasks are "
                            f"{sorted(resolve_tasks(bench.env))}")


def _env_facts(bench: Params) -> dict:
    from vla_pipeline.envs.tasks import resolve_tasks

    env = bench.env
    return {"tasks": resolve_tasks(env), "cameras": list(env.cameras), "image_size": env.image_size,
            "render": env.render.model_dump(), "max_episode_steps": env.max_episode_steps,
            "configurations": f"train seed {env.train_seeds[0]} (50 per task)"}


def _settings(bench: Params, sizes: BenchSizes, demos: Optional[str | Path]) -> dict:
    return {**asdict(sizes), "sft_batch_size": sizes.sft_batch_size or bench.sft.batch_size,
            "chunk_lens": list(CHUNK_LENS), "num_envs": list(NUM_ENVS), "vector": list(VECTOR_MODES),
            "start_method": "spawn", "policy": bench.policy.model_dump(),
            "demos": str(demos) if demos is not None else f"collected: {sizes.demo_episodes} expert episodes per task",
            "figure": "median of the repeats, after setup and a short untimed warm-up in the same process"}


def describe(result: dict) -> dict:
    """Medians and ratios only, for printing."""
    return {"medians": {name: f"{m['median']:g} {m['unit']}" for name, m in result["measurements"].items()},
            "peak_rss_mib": {name: m["peak_rss_mib"] for name, m in result["measurements"].items()},
            "ratios": result["ratios"]}
