"""Scripted-expert demonstrations -> a Parquet buffer snapshot (collect_demos stage)."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vla_pipeline.config import Params
from vla_pipeline.data.snapshot import load_episodes, snapshot_layout, write_snapshot
from vla_pipeline.envs.experts import run_expert_episode
from vla_pipeline.envs.sim import TaskSim
from vla_pipeline.envs.tasks import EpisodeSpec, instruction_for, resolve_tasks, split_configurations
from vla_pipeline.errors import PipelineError
from vla_pipeline.lifetime import die_with_parent
from vla_pipeline.provenance import env_spec, software_versions

EXPERT_SOURCE = "expert"


def demo_episodes(params: Params, section: str = "demos") -> dict[str, list[EpisodeSpec]]:
    """Per task: distinct train configurations (all train seeds pooled) in a random order,
    cycling only when a task asks for more demos than there are configurations.

    `section` names the params section with the demo settings: `demos`, or `offline_demos`
    (CO-RFT's small set)."""
    demos = getattr(params, section)
    configurations = split_configurations(params.env, "train")
    plan = {}
    for t, task in enumerate(resolve_tasks(params.env)):
        rng = np.random.default_rng([demos.seed, t])
        order = rng.permutation(len(configurations))
        plan[task] = []
        for i in range(demos.episodes_for(task)):
            config = configurations[int(order[i % len(order)])]
            plan[task].append(EpisodeSpec(task, config.seed, config.index, int(rng.integers(2**31)), "train"))
    return plan


def demo_settings(demos) -> dict:
    """The demo section as recorded in the snapshot's provenance. `expert` only when not
    MetaWorld's own scripts, so snapshots made before the key existed keep their bytes."""
    settings = demos.model_dump()
    if settings["expert"] == "metaworld":
        del settings["expert"]
    return settings


def collect_task(env_cfg: dict, task: str, specs: list[EpisodeSpec], noise: float, instruction: str,
                 frame_every: int, expert: str = "metaworld") -> tuple:
    """Run in a worker process: expert episodes with PNG-encoded frames every `frame_every` steps."""
    from vla_pipeline.config import EnvConfig

    cfg = EnvConfig.model_validate(env_cfg)
    started = time.perf_counter()
    sim = TaskSim(task, cfg)
    try:
        episodes = [run_expert_episode(sim, spec, noise, frame_every, instruction, EXPERT_SOURCE, expert)
                    for spec in specs]
        renders = sim.renderer.frames_rendered
    finally:
        sim.close()
    steps = sum(ep.length for ep in episodes)
    return episodes, {"env_steps": steps, "renders": renders, "seconds": time.perf_counter() - started}


def _collect_on_ray(jobs: list, params: Params, bar) -> list:
    """The same jobs as Ray tasks (`env.vector: ray`), read back in job order."""
    import ray

    from vla_pipeline.envs.ray_vector import start_ray

    started_here = not ray.is_initialized()
    if started_here:
        start_ray(params.env.ray, params.env.num_envs)
    try:
        task = ray.remote(collect_task).options(num_cpus=params.env.ray.worker_cpus)
        refs = [task.remote(*job) for job in jobs]
        results = []
        for job, ref in zip(jobs, refs):
            results.append(ray.get(ref))
            bar.update(len(job[2]))
        return results
    finally:
        if started_here:
            ray.shutdown()


def collect_demos(params: Params, out_dir: Path, section: str = "demos") -> dict:
    """Collect, filter and write the demo snapshot into `out_dir` (already atomic)."""
    demos = getattr(params, section)
    plan = demo_episodes(params, section)
    env_dict = params.env.model_dump()
    # Jobs of at most ~25 episodes, so both workers stay busy when one task has many demos.
    jobs = []
    for task, specs in plan.items():
        instruction = instruction_for(task, params.env.instruction_style)
        for start in range(0, len(specs), 25):
            jobs.append((env_dict, task, specs[start:start + 25], demos.action_noise, instruction,
                         demos.frame_every, demos.expert))
    started = time.perf_counter()
    workers = params.env.num_envs if params.env.vector != "sync" else 1
    bar = tqdm(total=sum(len(job[2]) for job in jobs), desc="collect_demos", unit="ep", mininterval=1.0)
    results = []
    if params.env.vector == "ray":
        results = _collect_on_ray(jobs, params, bar)
    elif workers > 1:
        ctx = multiprocessing.get_context("spawn")  # never fork after EGL rendering
        # initializer: a worker exits when this process dies (a `kill -9` of the stage leaves none)
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(collect_task, *job) for job in jobs]
            for job, fut in zip(jobs, futures):  # job order: the snapshot never depends on timing
                results.append(fut.result())
                bar.update(len(job[2]))
    else:
        for job in jobs:
            results.append(collect_task(*job))
            bar.update(len(job[2]))
    bar.close()
    wall = time.perf_counter() - started
    episodes_by_task: dict[str, list] = {task: [] for task in plan}
    for job, (episodes, _) in zip(jobs, results):
        episodes_by_task[job[1]] += episodes
    kept, expert_stats = {}, {}
    for task, episodes in episodes_by_task.items():
        solved = [ep for ep in episodes if ep.steps_to_success > 0]
        kept[task] = solved if demos.only_successes else episodes
        expert_stats[task] = {"episodes": len(episodes), "success_rate": len(solved) / len(episodes),
                              "kept": len(kept[task])}
        if not kept[task]:
            raise PipelineError(f"collect_demos: the expert solved no episode of {task}; nothing to keep")
    size = params.env.image_size
    provenance = {"source": EXPERT_SOURCE, "env": env_spec(params.env), "demos": demo_settings(demos),
                  "versions": software_versions()}
    manifest = write_snapshot(out_dir, kept, params.env.cameras, (size, size, 3), provenance,
                              demos.rows_per_row_group)
    steps = sum(r[1]["env_steps"] for r in results)
    renders = sum(r[1]["renders"] for r in results)
    busy = sum(r[1]["seconds"] for r in results)
    # Timing lives in the summary printed to the user, never inside the snapshot.
    return {"manifest": manifest, "expert": expert_stats, "env_steps": steps, "renders": renders,
            "wall_seconds": wall, "env_steps_per_s": steps / wall, "renders_per_s": renders / wall,
            "renders_per_s_per_worker": renders / busy}


def demo_counts(summary: dict) -> dict:
    """The demo stage's metrics: episodes and steps per task, and the expert's own record."""
    manifest = summary["manifest"]
    return {"tasks": manifest["tasks"], "expert": summary["expert"], "total_episodes": manifest["total_episodes"],
            "total_steps": manifest["total_rows"]}


def subset_demos(source: Path, out_dir: Path, episodes_per_task: int) -> dict:
    """The first `episodes_per_task` episodes of each task of the demo snapshot `source`, in its
    order, written as a snapshot into `out_dir` (an atomic temporary); returns the manifest.

    A task with fewer episodes keeps all it has (the manifest's counts say so). Frames and
    provenance are the source's, so a policy trained on the subset sees the same views."""
    by_task, manifest = load_episodes(source)
    layout = snapshot_layout(manifest)
    provenance = {**manifest["provenance"], "subset_of": str(source), "episodes_per_task": episodes_per_task}
    return write_snapshot(out_dir, {task: eps[:episodes_per_task] for task, eps in by_task.items()},
                          layout.cameras, tuple(layout.image_shape), provenance)
