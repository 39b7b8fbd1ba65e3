"""Scripted-expert demonstrations -> a Parquet buffer snapshot (collect_demos stage)."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vla_pipeline.config import Params
from vla_pipeline.data.snapshot import EncodedEpisode, write_snapshot
from vla_pipeline.envs.experts import run_expert_episode
from vla_pipeline.envs.sim import TaskSim
from vla_pipeline.envs.tasks import EpisodeSpec, instruction_for, resolve_tasks, train_variations
from vla_pipeline.errors import PipelineError

EXPERT_SOURCE = "expert"


def demo_episodes(params: Params) -> dict[str, list[EpisodeSpec]]:
    """Per task: cycle through the train variations; noise seeds from (demos.seed, task)."""
    variations = train_variations(params.env)
    plan = {}
    for t, task in enumerate(resolve_tasks(params.env)):
        rng = np.random.default_rng([params.demos.seed, t])
        order = rng.permutation(variations)
        plan[task] = [EpisodeSpec(task, int(order[i % len(order)]), int(rng.integers(2**31)), "train")
                      for i in range(params.demos.episodes_per_task)]
    return plan


def collect_task(env_cfg: dict, task: str, specs: list[EpisodeSpec], noise: float, instruction: str) -> tuple:
    """Run in a worker process: expert episodes with a frame at every step, PNG-encoded."""
    from vla_pipeline.config import EnvConfig

    cfg = EnvConfig.model_validate(env_cfg)
    started = time.perf_counter()
    sim = TaskSim(task, cfg)
    try:
        episodes = [EncodedEpisode.from_episode(run_expert_episode(sim, spec, noise, render=True),
                                                instruction, EXPERT_SOURCE) for spec in specs]
        renders = sim.renderer.frames_rendered
    finally:
        sim.close()
    steps = sum(ep.length for ep in episodes)
    return episodes, {"env_steps": steps, "renders": renders, "seconds": time.perf_counter() - started}


def collect_demos(params: Params, out_dir: Path) -> dict:
    """Collect, filter and write the demo snapshot into `out_dir` (already atomic)."""
    plan = demo_episodes(params)
    env_dict = params.env.model_dump()
    jobs = [(env_dict, task, specs, params.demos.action_noise, instruction_for(task, params.env.instruction_style))
            for task, specs in plan.items()]
    started = time.perf_counter()
    results = {}
    workers = params.env.num_envs if params.env.vector == "async" else 1
    bar = tqdm(total=len(jobs), desc="collect_demos", unit="task", mininterval=1.0)
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")  # never fork after EGL rendering
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            futures = {job[1]: pool.submit(collect_task, *job) for job in jobs}
            for task, fut in futures.items():
                results[task] = fut.result()
                bar.update(1)
    else:
        for job in jobs:
            results[job[1]] = collect_task(*job)
            bar.update(1)
    bar.close()
    wall = time.perf_counter() - started
    kept, expert_stats = {}, {}
    for task in plan:
        episodes, stats = results[task]
        solved = [ep for ep in episodes if ep.steps_to_success > 0]
        kept[task] = solved if params.demos.only_successes else episodes
        expert_stats[task] = {"episodes": len(episodes), "success_rate": len(solved) / len(episodes),
                              "kept": len(kept[task])}
        if not kept[task]:
            raise PipelineError(f"collect_demos: the expert solved no episode of {task}; nothing to keep")
    from vla_pipeline.checkpoint import software_versions
    from vla_pipeline.policies.factory import env_spec

    size = params.env.image_size
    provenance = {"source": EXPERT_SOURCE, "env": env_spec(params.env), "demos": params.demos.model_dump(),
                  "versions": software_versions()}
    manifest = write_snapshot(out_dir, kept, (size, size, 3), provenance, params.demos.rows_per_row_group)
    steps = sum(r[1]["env_steps"] for r in results.values())
    renders = sum(r[1]["renders"] for r in results.values())
    busy = sum(r[1]["seconds"] for r in results.values())
    # Timing lives in the summary printed to the user, never inside the snapshot.
    return {"manifest": manifest, "expert": expert_stats, "env_steps": steps, "renders": renders,
            "wall_seconds": wall, "env_steps_per_s": steps / wall, "renders_per_s": renders / wall,
            "renders_per_s_per_worker": renders / busy}
