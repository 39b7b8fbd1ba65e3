"""The fixed evaluation protocol (ARCHITECTURE section 7) and its metrics.

Three splits, each a fixed list of (task, configuration, seed): `test` (configurations of
`env.test_seed`, touched only for reported numbers), `validation` (`env.validation_seed`, for
choosing settings) and `train` (configurations the demos and RL drew from). iRe-VLA's two
groups split the train configurations further: `expert` (those with a demo) and `new` (those
without, seen only by RL). Per task and per
split: success rate with a 95% Wilson interval, mean steps to success (successes only), mean
episode length with failures counted at the horizon. The headline is the test split's mean
over tasks. The scripted expert on the same list is the ceiling row.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from vla_pipeline.config import EnvConfig, EvaluateConfig, Params
from vla_pipeline.envs.chunk_env import ChunkEnv, EpisodeQueue
from vla_pipeline.envs.experts import run_expert_episode
from vla_pipeline.envs.sim import TaskSim
from vla_pipeline import constants as C
from vla_pipeline.constants import GROUPS, REPORTED
from vla_pipeline.envs.tasks import SPLITS, Configuration, EpisodeSpec, resolve_tasks, split_configurations
from vla_pipeline.envs.vector import make_chunk_vector_env, reset_done, split_round_robin, sum_counters
from vla_pipeline.io import atomic_directory
from vla_pipeline.parallel import acting_threads
from vla_pipeline.stats import wilson_interval


def default_splits(params, name: str) -> tuple[str, ...]:
    """Every split for SFT, the expert and other checkpoints; a round is evaluated on validation
    only unless it is marked `test: true` (the final one): test is for reported numbers. An
    iRe-VLA round is also evaluated on the expert / new groups after every round, as the paper
    reports them. A CO-RFT run: validation, and test when marked."""
    if name in params.rounds and not params.rounds[name].test:
        return ("validation",)
    if name in params.ire_rounds:
        return ("test",) * params.ire_rounds[name].test + ("validation",) + GROUPS
    if name in params.offline_runs:
        return ("test",) * params.offline_runs[name].test + ("validation",)
    return SPLITS


def demo_configurations(snapshot: Path) -> dict[str, set[Configuration]]:
    """Per task, the train configurations that have a demo in `snapshot` (the `expert` group).
    Reads three columns of each shard, not the frames."""
    import pyarrow.parquet as pq

    try:
        shards = sorted(json.loads((Path(snapshot) / C.MANIFEST_FILE).read_text())["shards"])
        columns = (C.TASK, C.VARIATION_SEED, C.VARIATION)
        out: dict[str, set[Configuration]] = {}
        for name in shards:
            table = pq.read_table(Path(snapshot) / name, columns=list(columns))
            for task, seed, index in zip(*(table.column(c).to_pylist() for c in columns)):
                out.setdefault(task, set()).add(Configuration(int(seed), int(index)))
    except (OSError, ValueError, KeyError, TypeError) as err:  # pyarrow's errors are ValueErrors / OSErrors
        raise ValueError(f"{snapshot}: not a readable demo snapshot ({type(err).__name__}: {err})") from None
    return out


def group_episodes(cfg: EnvConfig, eval_cfg: EvaluateConfig, with_demo: Mapping[str, set[Configuration]],
                   per_group: int, groups: Sequence[str] = GROUPS) -> list[EpisodeSpec]:
    """iRe-VLA's groups: train configurations with a demo (`expert`) and without one (`new`).

    Same params and demo snapshot -> the same list; each (task, group) has its own stream.
    """
    train = split_configurations(cfg, "train")
    episodes = []
    for t, task in enumerate(resolve_tasks(cfg)):
        demo_configs = with_demo.get(task, set())
        pools = {"expert": sorted(demo_configs), "new": [c for c in train if c not in demo_configs]}
        for g, group in enumerate(GROUPS):
            if group not in groups:
                continue
            rng = np.random.default_rng([eval_cfg.seed, t, len(SPLITS) + g])
            pool = pools[group]
            # A small demo set has fewer placements with a demo than per_group: the expert group
            # is then all of them (each once: a deterministic policy would repeat its result).
            wanted = min(per_group, len(pool)) if group == "expert" and pool else per_group
            if len(pool) < wanted:
                raise ValueError(f"evaluate: {per_group} {group}-group episodes per task, but {task} has only "
                                 f"{len(pool)} train configurations {'with' if group == 'expert' else 'without'} "
                                 "a demo (ire.episodes_per_group)")
            for i in rng.permutation(len(pool))[:wanted]:
                config = pool[int(i)]
                episodes.append(EpisodeSpec(task, config.seed, config.index, int(rng.integers(2**31)), group))
    return episodes


def episodes_per_split(eval_cfg: EvaluateConfig) -> dict[str, int]:
    return {"test": eval_cfg.episodes_test, "validation": eval_cfg.episodes_validation,
            "train": eval_cfg.episodes_train}


def evaluation_episodes(cfg: EnvConfig, eval_cfg: EvaluateConfig, splits: Sequence[str] = SPLITS) -> list[EpisodeSpec]:
    """The fixed list of episodes: same params -> same list, whichever splits are asked for.

    Each (task, split) draws distinct configurations of its split with its own random
    stream, so the validation episodes are the same whether or not test is evaluated too.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; choose from {', '.join(SPLITS)}")
    counts = episodes_per_split(eval_cfg)
    episodes = []
    for t, task in enumerate(resolve_tasks(cfg)):
        for s, split in enumerate(SPLITS):
            if split not in splits:
                continue
            rng = np.random.default_rng([eval_cfg.seed, t, s])
            pool = split_configurations(cfg, split)
            picks = rng.permutation(len(pool))[:counts[split]]
            if len(picks) < counts[split]:
                raise ValueError(f"evaluate: {counts[split]} {split} episodes per task, but the split has "
                                 f"only {len(pool)} configurations")
            for i in picks:
                config = pool[int(i)]
                episodes.append(EpisodeSpec(task, config.seed, config.index, int(rng.integers(2**31)), split))
    return episodes


@dataclass
class EpisodeResult:
    task: str
    variation_seed: int
    variation: int
    split: str
    seed: int
    success: bool
    steps_to_success: int  # -1 when not solved
    length: int  # executed env steps


def summarize(results: Sequence[EpisodeResult], horizon: int) -> dict:
    n = len(results)
    wins = [r for r in results if r.success]
    lo, hi = wilson_interval(len(wins), n)
    return {
        "episodes": n,
        "success": len(wins) / n if n else None,
        "success_ci95": [lo, hi],
        "steps_to_success": float(np.mean([r.steps_to_success for r in wins])) if wins else None,
        "episode_length": float(np.mean([r.length if r.success else horizon for r in results])) if n else None,
    }


def build_metrics(results: Sequence[EpisodeResult], tasks: Sequence[str], horizon: int, header: dict) -> dict:
    """One section per evaluated split (`test` first: the headline). Overall numbers are means
    over tasks (the MT10 convention); every split has the same episodes per task, so the
    Wilson interval of the pooled episodes is the interval of that mean."""
    metrics: dict = dict(header)
    per_task = {}
    splits = [s for s in REPORTED if any(r.split == s for r in results)]
    for task in tasks:
        task_results = [r for r in results if r.task == task]
        per_task[task] = {split: summarize([r for r in task_results if r.split == split], horizon)
                          for split in splits}
    metrics["tasks"] = per_task
    metrics["splits"] = splits
    for split in splits:
        rows = [per_task[t][split] for t in tasks]
        steps = [r["steps_to_success"] for r in rows if r["steps_to_success"] is not None]
        pooled = [r for r in results if r.split == split]
        metrics[split] = {
            "success": float(np.mean([r["success"] for r in rows])),
            "success_ci95": list(wilson_interval(sum(r.success for r in pooled), len(pooled))),
            "steps_to_success": float(np.mean(steps)) if steps else None,
            "episode_length": float(np.mean([r["episode_length"] for r in rows])),
            "episodes": len(pooled),
        }
    return metrics


def task_table(metrics: dict, name: str) -> list[dict]:
    """Flat records for `dvc plots` (one bar per task and split)."""
    rows = []
    for task, splits in metrics["tasks"].items():
        for split, s in splits.items():
            rows.append({"policy": name, "task": task, "split": split, "success": s["success"],
                         "ci95_low": s["success_ci95"][0], "ci95_high": s["success_ci95"][1],
                         "steps_to_success": s["steps_to_success"], "episodes": s["episodes"]})
    return rows


ActFn = Callable[[dict], np.ndarray]


def run_episodes(envs, act: ActFn, total: int, desc: str = "episodes") -> tuple[list[EpisodeResult], dict]:
    """Step a vector of `ChunkEnv`s until every queued episode has finished."""
    started = time.perf_counter()
    obs, info = envs.reset()
    n = envs.num_envs
    specs = [_spec_from_info(info, i) for i in range(n)]
    results: list[tuple[int, EpisodeResult]] = []
    bar = tqdm(total=total, desc=desc, unit="ep", mininterval=2.0, dynamic_ncols=True)
    seen_per_env = [0] * n
    while any(s is not None for s in specs):
        actions = act(obs)
        obs, _, terminated, truncated, info = envs.step(actions)
        done = np.zeros(n, bool)
        for i in range(n):
            if specs[i] is None:
                continue
            if terminated[i] or truncated[i]:
                success_step = int(info["success_step"][i])
                key = (i, seen_per_env[i])
                seen_per_env[i] += 1
                spec = specs[i]
                results.append((key, EpisodeResult(spec.task, spec.variation_seed, spec.variation, spec.split,
                                                   spec.seed, success_step > 0, success_step,
                                                   int(info["episode_step"][i]))))
                done[i] = True
                bar.update(1)
        if done.any():
            obs, reset_info = reset_done(envs, done)
            for i in np.flatnonzero(done):
                specs[i] = _spec_from_info(reset_info, i)
    bar.close()
    counters = sum_counters(envs)
    counters["seconds"] = time.perf_counter() - started
    # Env i ran episodes i, i+n, ...: restore the list order so metrics never depend on timing.
    ordered = sorted(results, key=lambda kv: kv[0][1] * n + kv[0][0])
    return [r for _, r in ordered], counters


def _spec_from_info(info: dict, i: int) -> EpisodeSpec | None:
    if bool(info["idle"][i]):
        return None
    return EpisodeSpec(str(info["task"][i]), int(info["variation_seed"][i]), int(info["variation"][i]),
                       int(info["episode_seed"][i]), str(info["split"][i]))


def evaluate_policy(policy, env_cfg: EnvConfig, eval_cfg: EvaluateConfig, splits: Sequence[str] = SPLITS,
                    gamma: float = 0.99, desc: str = "evaluate", extra: Sequence[EpisodeSpec] = ()):
    """Run the listed episodes of `splits` (plus `extra`, e.g. the iRe-VLA groups)."""
    import torch

    episodes = evaluation_episodes(env_cfg, eval_cfg, splits) + list(extra)
    n_envs = min(env_cfg.num_envs, len(episodes))
    queues = [EpisodeQueue(part) for part in split_round_robin(episodes, n_envs)]
    generator = torch.Generator().manual_seed(eval_cfg.seed)

    def act(obs):
        return policy.act(obs, deterministic=eval_cfg.deterministic, generator=generator)["actions"]

    envs = make_chunk_vector_env(env_cfg, policy.config.chunk_len, gamma, queues, env_cfg.vector)
    try:
        with acting_threads(), policy.instruction_cache():
            return run_episodes(envs, act, len(episodes), desc=desc)
    finally:
        envs.close()


def validation_rollouts(params: Params, episodes: Optional[int] = None,
                        desc: str = "sft validation") -> Callable[..., dict]:
    """Roll the policy out on the first `episodes` (default `sft.validation_episodes`) validation
    configurations per task: the `validate` callback (`training.supervised.Validator`) of SFT's
    early stopping and of CO-RFT's choice of the kept weights."""
    count = params.sft.validation_episodes if episodes is None else episodes
    eval_cfg = params.evaluate.model_copy(update={"episodes_validation": count})

    def validate(policy) -> dict:
        results, _ = evaluate_policy(policy, params.env, eval_cfg, ["validation"], desc=desc)
        tasks = sorted({r.task for r in results})
        per_task = [np.mean([r.success for r in results if r.task == t]) for t in tasks]
        wins = [r.steps_to_success for r in results if r.success]
        return {"success": float(np.mean(per_task)), "steps_to_success": float(np.mean(wins)) if wins else None}

    return validate


def evaluate_expert(env_cfg: EnvConfig, eval_cfg: EvaluateConfig, splits: Sequence[str] = SPLITS,
                    expert: str = "metaworld") -> tuple[list[EpisodeResult], dict]:
    """The scripted expert (no noise, no rendering) on the same fixed list: the ceiling row.
    `expert`: the demonstrator the demos came from (`demos.expert`)."""
    started = time.perf_counter()
    episodes = evaluation_episodes(env_cfg, eval_cfg, splits)
    results, sims = [], {}
    try:
        for spec in tqdm(episodes, desc="expert", unit="ep", mininterval=2.0):
            if spec.task not in sims:
                sims[spec.task] = TaskSim(spec.task, env_cfg, render=False)
            ep = run_expert_episode(sims[spec.task], spec, action_noise=0.0, frame_every=None, expert=expert)
            s = ep.steps_to_success
            results.append(EpisodeResult(spec.task, spec.variation_seed, spec.variation, spec.split, spec.seed,
                                         s > 0, s, ep.length))
    finally:
        for sim in sims.values():
            sim.close()
    steps = sum(r.length for r in results)
    return results, {"env_steps": steps, "renders": 0, "seconds": time.perf_counter() - started}


def video_candidates(results: Sequence[EpisodeResult], split: str) -> dict[tuple[str, bool], list[EpisodeSpec]]:
    """Per (task, evaluated outcome) of `split`: its episodes in the results' fixed order, the
    order in which `record_videos` tries them."""
    slots: dict[tuple[str, bool], list[EpisodeSpec]] = {}
    for r in results:
        if r.split == split:
            slots.setdefault((r.task, r.success), []).append(
                EpisodeSpec(r.task, r.variation_seed, r.variation, r.seed, r.split))
    return dict(sorted(slots.items()))


# A re-run may end otherwise than the evaluated episode: one env acts on batch-1 inference, whose
# float rounding differs from the batched evaluation, and a contact can then tip either way. So
# each slot tries up to this many more candidates than it keeps.
EXTRA_VIDEO_TRIES = 2


def record_videos(policy, env_cfg: EnvConfig, eval_cfg: EvaluateConfig,
                  candidates: Mapping[tuple[str, bool], Sequence[EpisodeSpec]],
                  per_outcome: int) -> list[tuple[EpisodeSpec, list[np.ndarray], bool]]:
    """Per task, `per_outcome` successes and failures, re-run in-process with every step rendered.

    A slot keeps only re-runs that end as the slot says (the label always matches the video, and
    the video matches the evaluated outcome); it gives up after `per_outcome + EXTRA_VIDEO_TRIES`
    tries, so a slot can come back short."""
    import torch

    if per_outcome <= 0 or not candidates:
        return []
    plan: list[EpisodeSpec] = []  # the env's queue: each try appends the episode it resets to
    env = ChunkEnv(env_cfg.model_dump(), policy.config.chunk_len, 0.99, EpisodeQueue(plan), record_frames=True)
    generator = torch.Generator().manual_seed(eval_cfg.seed)
    videos = []
    try:
        with acting_threads():
            for (task, success), specs in tqdm(candidates.items(), desc="videos", unit="slot", mininterval=2.0):
                kept = 0
                for spec in specs[:per_outcome + EXTRA_VIDEO_TRIES]:
                    plan.append(spec)
                    frames, solved = _rerun(env, policy, eval_cfg, generator)
                    if solved == success:
                        videos.append((spec, frames, solved))
                        kept += 1
                        if kept == per_outcome:
                            break
    finally:
        env.close()
    return videos


def _rerun(env: ChunkEnv, policy, eval_cfg: EvaluateConfig, generator) -> tuple[list[np.ndarray], bool]:
    obs, _ = env.reset()
    while True:
        batch = {k: np.asarray(v)[None] for k, v in obs.items()}
        action = policy.act(batch, deterministic=eval_cfg.deterministic, generator=generator)["actions"][0]
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return env.recorded_frames(), bool(terminated or info["success"])


def write_video(path, frames: Sequence[np.ndarray], scale: int, fps: int = 20) -> None:
    """Frames are (V, H, W, 3): the cameras side by side, scaled up by `scale`."""
    import imageio.v3 as iio

    big = [np.kron(np.concatenate(list(f), axis=1), np.ones((scale, scale, 1), np.uint8)) for f in frames]
    iio.imwrite(path, np.stack(big), fps=fps, codec="libx264", macro_block_size=1)


def write_videos(policy, env_cfg: EnvConfig, eval_cfg: EvaluateConfig, results: Sequence[EpisodeResult],
                 split: str, out_dir) -> list[str]:
    """Record `evaluate.videos_per_outcome` successes and failures per task of `split` into
    `out_dir` (replaced atomically), one MP4 each, named
    <task>-<split>-<variation seed>-<variation>-<success|fail>.mp4 (the report reads the names)."""
    names = []
    with atomic_directory(out_dir) as tmp:
        for spec, frames, success in record_videos(policy, env_cfg, eval_cfg, video_candidates(results, split),
                                                   eval_cfg.videos_per_outcome):
            stem = f"{spec.task}-{spec.split}-{spec.variation_seed}-{spec.variation:02d}-{'success' if success else 'fail'}"
            write_video(tmp / f"{stem}.mp4", frames, eval_cfg.video_scale)
            names.append(f"{stem}.mp4")
    return names


def episode_records(results: Sequence[EpisodeResult]) -> list[dict]:
    """One record per evaluated episode, in protocol order (for paired comparisons)."""
    return [asdict(r) for r in results]
