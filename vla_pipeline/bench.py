"""Throughput benchmark: raw MetaWorld, the chunk collector, SFT and PPO updates, in one run.

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
import multiprocessing
import os
import platform
import statistics
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from vla_pipeline.config import Params
from vla_pipeline.errors import PipelineError

DEFAULT_OUT = Path("data/metrics/bench.json")
CHUNK_LENS = (1, 4, 8)  # K: actions per decision, and the raw loop's render period
NUM_ENVS = (1, 2)  # env workers of the collector (sync: envs stepped in turn in one process)
VECTOR_MODES = ("sync", "async")  # the project's vector-env backends (envs/vector.py)
ENV_STEPS_PER_S = "env_steps/s"
SAMPLES_PER_S = "samples/s"
MIB = 1024 * 1024


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


def _sig(value: float) -> float:
    """4 significant digits: timings are not more precise than that, and the JSON stays readable."""
    return float(f"{value:.4g}")


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


@dataclass(frozen=True)
class _Planned:
    name: str
    job: Callable[..., dict]  # runs in the child; returns {"repeats": [rates], "work": [units per repeat]}
    kwargs: dict
    unit: str
    config: dict = field(default_factory=dict)  # what was measured, written beside the figure


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


def _measure(item: _Planned) -> dict:
    started = time.perf_counter()
    out, memory = _run_in_child(item.name, item.job, **item.kwargs)
    repeats = [_sig(r) for r in out["repeats"]]
    return {"median": _sig(statistics.median(repeats)), "repeats": repeats, "unit": item.unit,
            "peak_rss_mib": memory["peak_rss_mib"], "rss_detail": memory["detail"],
            "config": {**item.config, **out.get("config", {}), "work_per_repeat": out["work"]},
            "seconds": round(time.perf_counter() - started, 1)}


def _summary_line(name: str, entry: dict) -> str:
    spread = ", ".join(f"{r:g}" for r in entry["repeats"])
    return (f"bench {name}: {entry['median']:g} {entry['unit']} (repeats {spread}; "
            f"peak {entry['peak_rss_mib']:.0f} MiB; {entry['seconds']:.0f} s)")


def _check_demos(path: Path, bench: Params) -> None:
    """A given snapshot must hold the frames and tasks the policy is built for (read from its
    manifest, before any measurement starts)."""
    from vla_pipeline.data.snapshot import read_manifest, snapshot_layout
    from vla_pipeline.envs.tasks import resolve_tasks

    manifest = read_manifest(path)
    cameras, shape = snapshot_layout(manifest)
    size = bench.env.image_size
    if list(cameras) != list(bench.env.cameras) or tuple(shape) != (size, size, 3):
        raise PipelineError(f"{path} holds cameras {list(cameras)} at {shape[0]} px; the params ask for "
                            f"env.cameras {list(bench.env.cameras)} at {size} px")
    if set(manifest["tasks"]) != set(resolve_tasks(bench.env)):
        raise PipelineError(f"{path} holds demos of tasks {sorted(manifest['tasks'])}; the params' tasks are "
                            f"{sorted(resolve_tasks(bench.env))}")


# ----------------------------------------------------------------------------- facts written beside the figures


def machine_facts(params: Params) -> dict:
    """What makes figures from two machines comparable (never host names or timestamps)."""
    import torch

    from vla_pipeline.provenance import software_versions

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_count": os.cpu_count(), "usable_cpus": usable, "cpu_model": _cpu_model(),
            "architecture": platform.machine(), "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "torch_threads": {"default": torch.get_num_threads(), "acting": 1, "sft": params.sft.num_threads,
                              "ppo": params.ppo.num_threads},
            "versions": software_versions()}


def _cpu_model() -> Optional[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return None


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


# ----------------------------------------------------------------------------- child processes


def _run_in_child(name: str, job: Callable[..., dict], **kwargs) -> tuple[dict, dict]:
    """Run `job(**kwargs)` in a fresh spawned process; return its result and its peak memory.

    Not a daemon: the async collector's child starts env workers of its own, which a daemonic
    process may not."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(sender, job, kwargs), name=f"bench-{name}")
    try:
        with _quiet_child_progress():
            proc.start()
        sender.close()  # the child holds its own copy: EOF here once it is gone
        try:
            status, payload, memory = receiver.recv()
        except EOFError:
            proc.join()
            raise PipelineError(f"bench {name}: the measuring process died (exit code {proc.exitcode}); "
                                "see its output above (out of memory? a crash in the simulator or renderer?)") from None
        proc.join()
    finally:
        receiver.close()
        sender.close()
        if proc.is_alive():  # interrupted: do not leave a measurement running
            proc.terminate()
            proc.join()
    if status != "ok":
        raise PipelineError(f"bench {name}: {payload}")
    return payload, memory


@contextlib.contextmanager
def _quiet_child_progress():
    """Children inherit TQDM_DISABLE=1 (tqdm reads it at import): the SFT loop and the demo
    collector draw bars of their own, and this process reports one line per measurement."""
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous


def _child_main(conn, job: Callable[..., dict], kwargs: dict) -> None:
    sampler = _TreePeakRSS().start()
    try:
        result = job(**kwargs)
        conn.send(("ok", result, sampler.stop()))
    except Exception as exc:  # reported by the parent as one PipelineError
        detail = str(exc) if isinstance(exc, PipelineError) else \
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        conn.send(("error", detail, None))
    finally:
        conn.close()


class _TreePeakRSS:
    """Peak memory of this process and all its descendants, sampled in a thread.

    Not `getrusage`: on Linux a spawned process's `ru_maxrss` starts at its parent's RSS at
    spawn time (exec keeps the old image's high-water mark), so it would report the parent's
    memory. Each process's own peak is `VmHWM` in /proc/<pid>/status (per address space, fresh
    after exec). The async collector's env workers live beside it, so the tree's figure is the
    largest sum of current RSS seen; sampling every 0.2 s, with the process list refreshed every
    second, costs the measurement next to nothing. RSS counts shared library pages once per
    process."""

    def __init__(self, interval: float = 0.2, rescan_every: int = 5):
        self.interval, self.rescan_every = interval, rescan_every
        self.tree_peak = 0  # bytes: the largest sum of current RSS over the tree
        self.process_peaks: dict[int, int] = {}  # pid -> last VmHWM seen, bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def start(self) -> "_TreePeakRSS":
        self._thread.start()
        return self

    def stop(self) -> dict:
        """Peaks in MiB: `peak_rss_mib` (the tree's, floored by this process's exact own peak)
        and the detail behind it."""
        self._stop.set()
        self._thread.join()
        own = _vm_hwm(os.getpid()) or self.process_peaks.get(os.getpid(), 0)
        descendants = sum(peak for pid, peak in self.process_peaks.items() if pid != os.getpid())
        mib = lambda b: round(b / MIB, 1)  # noqa: E731
        return {"peak_rss_mib": mib(max(self.tree_peak, own)),
                "detail": {"process_peak_mib": mib(own), "descendants_peak_sum_mib": mib(descendants),
                           "tree_sampled_peak_mib": mib(self.tree_peak)}}

    def _run(self) -> None:
        import psutil

        me, children, tick = psutil.Process(), [], 0
        while True:
            if tick % self.rescan_every == 0:
                with contextlib.suppress(psutil.Error):
                    children = me.children(recursive=True)
            total = 0
            for proc in (me, *children):
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
                    self.process_peaks[proc.pid] = max(self.process_peaks.get(proc.pid, 0), _vm_hwm(proc.pid) or 0)
            self.tree_peak = max(self.tree_peak, total)
            tick += 1
            if self._stop.wait(self.interval):
                return


def _vm_hwm(pid: int) -> Optional[int]:
    """A process's peak RSS in bytes since it started (Linux), None where /proc cannot tell."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return None


def _repeat(run: Callable[[], float], repeats: int) -> dict:
    """Time `run` (which returns the work it did) `repeats` times: rates and work per repeat."""
    rates, work = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        done = run()
        seconds = time.perf_counter() - started
        if done <= 0 or seconds <= 0:
            raise PipelineError(f"a repeat did no measurable work ({done} units in {seconds:.3g} s)")
        rates.append(done / seconds)
        work.append(done)
    return {"repeats": rates, "work": work}


# ----------------------------------------------------------------------------- the jobs (run in the children)


def _demos_job(params_raw: dict, out_dir: str, episodes: int) -> dict:
    """A small demo snapshot from the project's collector; failures kept too, so that no task
    can come back empty (the measurements need frames, not good demos)."""
    from vla_pipeline.demos import collect_demos
    from vla_pipeline.io import atomic_directory

    params = Params.model_validate(params_raw)
    demos = params.demos.model_copy(update={"episodes_per_task": episodes, "task_episodes": {},
                                            "only_successes": False})
    with atomic_directory(out_dir) as tmp:
        summary = collect_demos(params.model_copy(update={"demos": demos}), tmp)
    return {"episodes": summary["manifest"]["total_episodes"], "rows": summary["manifest"]["total_rows"]}


class _RawLoop:
    """MetaWorld at the collector's render schedule and nothing else: one sim per task, episodes
    round-robin over the tasks, uniform random actions, and a frame after every reset and after
    every K steps or the episode's end (the decision points of K-step chunks)."""

    def __init__(self, sims: list, chunk_len: int, configuration_seed: int, rng: np.random.Generator):
        self.sims, self.chunk_len, self.configuration_seed, self.rng = sims, chunk_len, configuration_seed, rng
        self.current = -1
        self.since_frame = 0
        self._next_episode()

    def _next_episode(self) -> None:
        from vla_pipeline.envs.tasks import NUM_VARIATIONS

        self.current = (self.current + 1) % len(self.sims)
        sim = self.sims[self.current]
        sim.reset(self.configuration_seed, int(self.rng.integers(NUM_VARIATIONS)))
        sim.render()
        self.since_frame = 0

    def run(self, steps: int) -> int:
        from vla_pipeline.constants import ACTION_DIM

        for _ in range(steps):
            sim = self.sims[self.current]
            out = sim.step(self.rng.uniform(-1.0, 1.0, ACTION_DIM))
            self.since_frame += 1
            done = out.terminated or out.truncated
            if done or self.since_frame == self.chunk_len:
                sim.render()
                self.since_frame = 0
            if done:
                self._next_episode()
        return steps


def _raw_job(params_raw: dict, chunk_len: int, steps: int, repeats: int, seed: int) -> dict:
    from vla_pipeline.envs.sim import TaskSim
    from vla_pipeline.envs.tasks import resolve_tasks

    env = Params.model_validate(params_raw).env
    sims = []
    try:
        # Every task's sim is built before timing, as the collector's warm-up builds them.
        sims = [TaskSim(task, env) for task in resolve_tasks(env)]
        loop = _RawLoop(sims, chunk_len, env.train_seeds[0], np.random.default_rng(seed))
        loop.run(2 * chunk_len)  # warm-up
        return _repeat(lambda: loop.run(steps), repeats)
    finally:
        for sim in sims:
            sim.close()


def _random_policy(params: Params, chunk_len: int):
    """A VLA from the config with random weights (encoders never downloaded)."""
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.policies.factory import build_policy

    cfg = params.policy
    cfg = cfg.model_copy(update={"chunk_len": chunk_len,
                                 "vision": cfg.vision.model_copy(update={"pretrained": None}),
                                 "text": cfg.text.model_copy(update={"pretrained": None})})
    return build_policy(cfg, params.env, resolve_tasks(params.env))


def _open_every_task(envs, num_tasks: int) -> None:
    """Start one episode of every task in every env before timing, through the curriculum's
    public task weights. A ChunkEnv builds a task's sim (MetaWorld env and renderer, ~1 s) the
    first time it draws the task; a PPO round pays that once per worker and task, a short
    repeat would count it as stepping time."""
    for task in range(num_tasks):
        envs.call("set_task_weights", [float(i == task) for i in range(num_tasks)])
        envs.reset()
    envs.call("set_task_weights", None)  # back to round-robin, as training_queues sets them up


def _collector_job(params_raw: dict, chunk_len: int, vector: str, num_envs: int, steps: int, repeats: int,
                   seed: int) -> dict:
    """PPO's rollout path: make_chunk_vector_env + ChunkCollector.collect with the policy acting
    on one torch thread, as training/ppo/trainer.run_round does."""
    import torch

    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.envs.vector import make_chunk_vector_env
    from vla_pipeline.parallel import acting_threads
    from vla_pipeline.training.ppo.rollout import ChunkCollector
    from vla_pipeline.training.ppo.trainer import training_queues

    params = Params.model_validate(params_raw)
    torch.manual_seed(seed)
    policy = _random_policy(params, chunk_len).to(params.ppo.device).eval()
    queues = training_queues(params, num_envs, seed)
    envs = make_chunk_vector_env(params.env, chunk_len, params.ppo.gamma, queues, vector)
    try:
        _open_every_task(envs, len(resolve_tasks(params.env)))
        collector = ChunkCollector(envs, params.ppo.gamma, params.ppo.gae_lambda, "bench",
                                   torch.Generator().manual_seed(seed))
        lockstep = -(-steps // (num_envs * chunk_len))  # decisions per env: at least `steps` env steps

        def collect() -> int:
            return collector.collect(policy, lockstep)[2]["env_steps"]

        with acting_threads():
            collector.collect(policy, 1)  # warm-up
            return {**_repeat(collect, repeats), "config": {"decisions_per_env": lockstep}}
    finally:
        envs.close()


def _sft_job(params_raw: dict, demos: str, steps: int, batch_size: int, repeats: int, seed: int) -> dict:
    """sft.train_on_windows on the demo windows, set up as train_sft does (normalisation from the
    demos, task-balanced windows); no validation rollouts."""
    import torch

    from vla_pipeline.data.snapshot import load_snapshot
    from vla_pipeline.data.windows import ChunkWindows
    from vla_pipeline.envs.tasks import resolve_tasks
    from vla_pipeline.parallel import torch_threads
    from vla_pipeline.training.supervised import train_on_windows

    params = Params.model_validate(params_raw)
    cfg = params.sft.model_copy(update={"steps": steps, "batch_size": batch_size, "validate_every": 0,
                                        "log_every": steps, "seed": seed})
    tasks = resolve_tasks(params.env)
    table, _ = load_snapshot(demos, tasks)
    missing = sorted(set(tasks) - set(table.task))
    if missing:
        raise PipelineError(f"{demos} has no demos for tasks {missing}")
    torch.manual_seed(seed)
    policy = _random_policy(params, params.policy.chunk_len)
    policy.set_normalization(policy.proprio_features(table.proprio, table.state), table.action, table.state)
    windows = ChunkWindows(table, policy.config.chunk_len, policy.config.task_names, balance_tasks=cfg.task_balance,
                           task_weights=cfg.task_weights)
    aux = params.policy.aux_state_weight

    def train() -> int:
        train_on_windows(policy, windows, cfg, aux)
        return steps * batch_size

    with torch_threads(cfg.num_threads):
        train_on_windows(policy, windows, cfg.model_copy(update={"steps": 1, "log_every": 1}), aux)  # warm-up
        return _repeat(train, repeats)


def _ppo_job(params_raw: dict, demos: str, decisions: int, repeats: int, seed: int) -> dict:
    """PPOTrainer.update on one rollout batch from the collector, with the self-BC buffer seeded
    from the demos as round r01's is. `target_kl` is off so that every repeat runs all epochs."""
    import torch

    from vla_pipeline.parallel import torch_threads
    from vla_pipeline.training.rounds import open_buffer
    from vla_pipeline.training.ppo.trainer import PPOTrainer

    params = Params.model_validate(params_raw)
    ppo = params.ppo.model_copy(update={"target_kl": None,
                                        "minibatch_size": min(params.ppo.minibatch_size, decisions)})
    params = params.model_copy(update={"ppo": ppo})
    torch.manual_seed(seed)
    policy = _random_policy(params, params.policy.chunk_len).to(ppo.device).eval()
    batch = _rollout_batch(params, policy, decisions, seed)
    buffer, _ = open_buffer(params, "demos", Path(demos))
    trainer = PPOTrainer(policy, buffer, params, "bench")
    start_bc = trainer.measure_bc_loss()  # also decodes the buffer's frames, before timing
    if params.bc.weight_rule == "dual" and start_bc is not None:
        trainer.weight.set_target(start_bc, params.bc.target_slack)
    per_epoch = _minibatch_samples(len(batch), ppo.minibatch_size)

    def update() -> int:
        return per_epoch * trainer.update(batch, value_only=False)["epochs_run"]

    with torch_threads(ppo.num_threads):
        out = _repeat(update, repeats)
    return {**out, "config": {"bc_term": start_bc is not None, "bc_batch_size": params.bc.batch_size,
                              "bc_weight_rule": params.bc.weight_rule}}


def _rollout_batch(params: Params, policy, decisions: int, seed: int):
    """`decisions` decisions from one in-process env through the collector (not timed)."""
    import torch

    from vla_pipeline.envs.vector import make_chunk_vector_env
    from vla_pipeline.parallel import acting_threads
    from vla_pipeline.training.ppo.rollout import ChunkCollector
    from vla_pipeline.training.ppo.trainer import training_queues

    ppo, k = params.ppo, policy.config.chunk_len
    envs = make_chunk_vector_env(params.env, k, ppo.gamma, training_queues(params, 1, seed), "sync")
    try:
        collector = ChunkCollector(envs, ppo.gamma, ppo.gae_lambda, "bench", torch.Generator().manual_seed(seed))
        with acting_threads():
            batch, _, _ = collector.collect(policy, decisions)
    finally:
        envs.close()
    return batch


def _minibatch_samples(n: int, minibatch_size: int) -> int:
    """Decisions one PPO epoch trains on: PPOTrainer.update skips a last minibatch of one."""
    return sum(min(minibatch_size, n - start) for start in range(0, n, minibatch_size) if n - start >= 2)


def describe(result: dict) -> dict:
    """Medians and ratios only, for printing."""
    return {"medians": {name: f"{m['median']:g} {m['unit']}" for name, m in result["measurements"].items()},
            "peak_rss_mib": {name: m["peak_rss_mib"] for name, m in result["measurements"].items()},
            "ratios": result["ratios"]}
