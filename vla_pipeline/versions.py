"""Every versioned checkpoint and buffer in git history: where it came from and how it did.

A commit that changed `dvc.lock` pins one version of each output (by DVC's md5). For
each such commit this lists the checkpoints (`data/checkpoints/<name>`) and buffers
(`data/buffers/<name>`) with their round inputs, whether the bytes changed since the
previous listed commit, the params that changed, and the success of the matching
evaluation (`data/metrics/eval-<name>.json`, committed in git) on its most final split. Any listed version comes
back with `git checkout <commit> && dvc checkout` (README "Versions").
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from vla_pipeline.errors import PipelineError

KINDS = {"checkpoints": "checkpoint", "buffers": "buffer"}
REPORTED_SPLITS = ("test", "validation", "heldout")  # the first one evaluated is shown; heldout: schema-1 runs


def _git(repo: Path, *args: str, check: bool = True) -> str | None:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        if check:
            raise PipelineError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
        return None
    return proc.stdout


def _load(text: str | None, loader) -> dict:
    if text is None:
        return {}
    try:
        value = loader(text)
    except (ValueError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict) and obj:
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def params_diff(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every leaf that changed (sections added or removed included)."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(a.keys() | b.keys()):
        if key not in a:
            lines.append(f"{key}: (none) -> {b[key]!r}")
        elif key not in b:
            lines.append(f"{key}: {a[key]!r} -> (none)")
        elif a[key] != b[key]:
            lines.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return lines


def _outputs(lock: dict) -> dict[str, str]:
    """'checkpoints/sft' -> md5 for every checkpoint and buffer output in a dvc.lock."""
    found = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            parts = Path(out.get("path", "")).parts
            if len(parts) == 3 and parts[0] == "data" and parts[1] in KINDS:
                found[f"{parts[1]}/{parts[2]}"] = str(out.get("md5", "?")).removesuffix(".dir")
    return found


def _reported_result(metrics: dict) -> tuple[str | None, float | None, float | None]:
    """(split, success, steps) of the most final split an evaluation holds: test when the
    round was evaluated on it, else validation (rounds default to validation only)."""
    for split in REPORTED_SPLITS:
        if isinstance(metrics.get(split), dict):
            return split, metrics[split].get("success"), metrics[split].get("steps_to_success")
    return None, None, None


def _snapshot(repo: Path, rev: str | None) -> dict:
    """dvc.lock, params and metrics at a commit (rev=None: the working tree)."""
    def read(path: str) -> str | None:
        if rev is None:
            file = repo / path
            return file.read_text() if file.is_file() else None
        return _git(repo, "show", f"{rev}:{path}", check=False)

    return {"lock": _load(read("dvc.lock"), yaml.safe_load), "params": _load(read("params.yaml"), yaml.safe_load),
            "read": read}


def list_versions(repo: str | Path = ".", rev: str = "HEAD", workspace: bool = True) -> list[dict]:
    """One record per commit that changed dvc.lock (oldest first), plus the uncommitted
    working tree when its dvc.lock differs from HEAD's."""
    repo = Path(repo)
    if _git(repo, "rev-parse", "--git-dir", check=False) is None:
        raise PipelineError(f"{repo.resolve()} is not a git repository")
    log = _git(repo, "log", "--reverse", "--format=%H%x09%s", rev, "--", "dvc.lock", check=False)
    if log is None:
        raise PipelineError(f"no git revision {rev!r} in {repo.resolve()}")
    commits = [line.split("\t", 1) for line in log.splitlines() if line]
    entries = [(sha, subject, _snapshot(repo, sha)) for sha, subject in commits]
    if workspace:
        current = _snapshot(repo, None)
        if not entries or current["lock"] != entries[-1][2]["lock"] or current["params"] != entries[-1][2]["params"]:
            entries.append(("workspace", "(uncommitted)", current))
    records, previous = [], {"lock": {}, "params": {}}
    prev_outputs: dict[str, str] = {}
    for sha, subject, snap in entries:
        offline = {name: {"policy_in": "sft-offline", "buffer_in": "demos-offline"}
                   for name in snap["params"].get("offline_runs") or {}}
        rounds = {**offline, **(snap["params"].get("ire_rounds") or {}), **(snap["params"].get("rounds") or {})}
        outputs = []
        order = {name: i for i, name in enumerate(["sft", "demos", *(snap["params"].get("rounds") or {}),
                                                   *(snap["params"].get("ire_rounds") or {}),
                                                   "sft-offline", "demos-offline", *offline])}

        def position(item):  # checkpoints before buffers; sft/demos, ACPPO, iRe-VLA, then CO-RFT in params order
            kind, name = item[0].split("/")
            return list(KINDS).index(kind), order.get(name, len(order)), name

        lock_outputs = _outputs(snap["lock"])
        for key, md5 in sorted(lock_outputs.items(), key=position):
            kind, name = key.split("/")
            inputs = rounds.get(name) if isinstance(rounds.get(name), dict) else None
            evaluation = "expert" if name == "demos" else name
            metrics = _load(snap["read"](f"data/metrics/eval-{evaluation}.json"), json.loads)
            split, success, steps = _reported_result(metrics)
            outputs.append({"kind": KINDS[kind], "name": name, "path": f"data/{key}", "md5": md5,
                            "changed": prev_outputs.get(key) != md5, "inputs": inputs,
                            "split": split, "success": success, "steps_to_success": steps,
                            "evaluation": f"eval-{evaluation}.json" if metrics else None})
        records.append({"commit": sha, "subject": subject,
                        "params_diff": params_diff(previous["params"], snap["params"]) if previous["lock"] else [],
                        "outputs": outputs})
        prev_outputs = lock_outputs
        previous = snap
    return records


def format_versions(records: list[dict]) -> str:
    def num(value, spec):
        return "-" if value is None else format(value, spec)

    lines = []
    for rec in records:
        lines.append(f"{rec['commit'][:9]}  {rec['subject']}")
        if rec["params_diff"]:
            lines.append("  params: " + "; ".join(rec["params_diff"]))
        for out in rec["outputs"]:
            inputs = (f"from {out['inputs']['policy_in']} + {out['inputs']['buffer_in']}" if out["inputs"] else "")
            lines.append(f"  {out['kind']:<10} {out['name']:<8} {out['md5'][:10]}  "
                         f"{'new' if out['changed'] else 'same':<4}  {out['split'] or '':<10} success {num(out['success'], '.3f'):>5}"
                         f"  steps {num(out['steps_to_success'], '.1f'):>5}  {inputs}".rstrip())
    lines.append("restore a commit's outputs: git checkout <commit> && dvc checkout"
                 "   (back: git checkout - && dvc checkout)")
    return "\n".join(lines)
