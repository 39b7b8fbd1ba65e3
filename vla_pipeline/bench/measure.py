"""How one benchmark figure is measured: in a fresh spawned child process, timed over repeats,
with the peak memory of the child's process tree, and the machine facts written beside it.

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
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from vla_pipeline.config import Params
from vla_pipeline.errors import PipelineError

ENV_STEPS_PER_S = "env_steps/s"
SAMPLES_PER_S = "samples/s"
MIB = 1024 * 1024


def _sig(value: float) -> float:
    """4 significant digits: timings are not more precise than that, and the JSON stays readable."""
    return float(f"{value:.4g}")


@dataclass(frozen=True)
class _Planned:
    name: str
    job: Callable[..., dict]  # runs in the child; returns {"repeats": [rates], "work": [units per repeat]}
    kwargs: dict
    unit: str
    config: dict = field(default_factory=dict)  # what was measured, written beside the figure


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


# ----------------------------------------------------------------------------- facts written beside the figures


def machine_facts(params: Params) -> dict:
    """What makes figures from two machines comparable (never host names or timestamps)."""
    import torch

    from vla_pipeline.provenance import software_versions

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_count": os.cpu_count(), "usable_cpus": usable, "cpu_model": cpuinfo_field("model name"),
            "architecture": platform.machine(), "mujoco_gl": os.environ.get("MUJOCO_GL"),
            "torch_threads": {"default": torch.get_num_threads(), "acting": 1, "sft": params.sft.num_threads,
                              "ppo": params.ppo.num_threads},
            "versions": software_versions()}


def cpuinfo_field(name: str) -> Optional[str]:
    """The first `name : value` of /proc/cpuinfo (None where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.partition(":")[2].strip()
    return None


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
