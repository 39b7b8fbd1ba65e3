"""The whole params file: `Params`, its sections' names, and how a file is read and validated.

Unknown keys, wrong types and impossible values fail before any work starts, with one
message naming the file and the dotted key. Stages read only their own sections; the CLI
carries paths and names, never hyper-parameters.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vla_pipeline.config.base import Section
from vla_pipeline.config.env import DemosConfig, DemoSubsetConfig, EnvConfig, EvaluateConfig
from vla_pipeline.config.policy import PolicyConfig
from vla_pipeline.config.training import (
    ROUND_SECTIONS, BCConfig, BufferConfig, IreConfig, IreRoundConfig, OfflineConfig, OfflineRunConfig, PPOConfig,
    RoundConfig, SFTConfig,
)
from vla_pipeline.constants import ROOT_BUFFERS, ROOT_CHECKPOINTS, ROOT_DEMOS
from vla_pipeline.errors import PipelineError

DEFAULT_PARAMS_FILE = "params.yaml"

SECTIONS: dict[str, type[Section]] = {
    "env": EnvConfig,
    "demos": DemosConfig,
    "demos_small": DemoSubsetConfig,  # the small demo set: a subset of `demos`
    "policy": PolicyConfig,
    "sft": SFTConfig,
    "evaluate": EvaluateConfig,
    "ppo": PPOConfig,
    "bc": BCConfig,
    "buffer": BufferConfig,
    "rounds": RoundConfig,  # a mapping of round name -> RoundConfig
    "ire": IreConfig,
    "ire_rounds": IreRoundConfig,  # a mapping of round name -> IreRoundConfig
    "offline_demos": DemosConfig,  # CO-RFT's small demo set
    "offline": OfflineConfig,
    "offline_runs": OfflineRunConfig,  # a mapping of run name -> OfflineRunConfig
    "sft_offline": SFTConfig,  # keys of `sft` replaced for CO-RFT's imitation step
    "sft_small": SFTConfig,  # keys of `sft` replaced for SFT on the small demo set
}

# The recipes of the sft stage: `sft`, or `sft` with the keys of one of these sections replaced.
SFT_RECIPES = ("sft_offline", "sft_small")

ROUND_NAME = r"^[a-z0-9][a-z0-9_-]*$"
RESERVED_NAMES = (*ROOT_CHECKPOINTS, *ROOT_BUFFERS, "expert")  # names of data/ entries that are not rounds


class Params(BaseModel):
    """The whole params file, validated at once so a typo anywhere is caught early."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: EnvConfig = EnvConfig()
    demos: DemosConfig = DemosConfig()
    policy: PolicyConfig = PolicyConfig()
    sft: SFTConfig = SFTConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ppo: PPOConfig = PPOConfig()
    bc: BCConfig = BCConfig()
    buffer: BufferConfig = BufferConfig()
    rounds: dict[str, RoundConfig] = Field(default_factory=dict)
    ire: IreConfig = IreConfig()
    ire_rounds: dict[str, IreRoundConfig] = Field(default_factory=dict)
    offline_demos: DemosConfig = DemosConfig(episodes_per_task=50, frame_every=1, seed=1)
    offline: OfflineConfig = OfflineConfig()
    offline_runs: dict[str, OfflineRunConfig] = Field(default_factory=dict)
    # CO-RFT's imitation step: keys of `sft` it sets otherwise (a small demo set wants other
    # regularisation than the main one); {} = the `sft` recipe unchanged.
    sft_offline: dict[str, Any] = Field(default_factory=dict)
    demos_small: DemoSubsetConfig = DemoSubsetConfig()
    # SFT on the small demo set: keys of `sft` it sets otherwise; {} = the `sft` recipe unchanged.
    sft_small: dict[str, Any] = Field(default_factory=dict)

    # The sections holding a method's runs (name -> run config with `test` and `report_row()`),
    # in pipeline order. The report lists every run of these; a new method adds its section here.
    RUN_SECTIONS: ClassVar[tuple[str, ...]] = ("rounds", "ire_rounds", "offline_runs")

    def runs(self) -> Iterator[tuple[str, Any]]:
        """(name, run config) of every method's runs, in pipeline order."""
        for section in self.RUN_SECTIONS:
            yield from getattr(self, section).items()

    @model_validator(mode="after")
    def _rounds_chain(self) -> "Params":
        import re

        for name, item in self.rounds.items():
            if not re.match(ROUND_NAME, name) or name in RESERVED_NAMES:
                raise ValueError(f"rounds: bad round name {name!r} (lowercase letters, digits, - and _; "
                                 f"not {'/'.join(RESERVED_NAMES)})")
            if item.policy_in in self.ire_rounds or item.buffer_in in self.ire_rounds:
                raise ValueError(f"rounds.{name}: an ACPPO round starts from sft / demos or an ACPPO round, "
                                 "not from an iRe-VLA round")
            if item.policy_in not in ROOT_CHECKPOINTS and item.policy_in not in self.rounds:
                raise ValueError(f"rounds.{name}.policy_in: no round or checkpoint named {item.policy_in!r}")
            if item.buffer_in not in ROOT_BUFFERS and item.buffer_in not in self.rounds:
                raise ValueError(f"rounds.{name}.buffer_in: no round or snapshot named {item.buffer_in!r}")
        for name in self.rounds:  # follow predecessors: a cycle never reaches sft/demos
            seen, current = set(), name
            while current in self.rounds:
                if current in seen:
                    raise ValueError(f"rounds: round {name!r} is part of a predecessor cycle")
                seen.add(current)
                current = self.rounds[current].policy_in
        for name in self.rounds:
            self._round_fits_its_chain(name)
        self._ire_chain()
        self._offline_runs()
        for recipe in SFT_RECIPES:
            self.sft_recipe(recipe)  # a bad key or value in a recipe fails here, not in its stage
        return self

    def _round_fits_its_chain(self, name: str) -> None:
        """`base` is the chain's SFT checkpoint, the buffer goes back to that checkpoint's demos,
        the chain keeps one label, and `set` names known keys with valid values."""
        item, where = self.rounds[name], f"rounds.{name}"
        root = self.chain_root(name)
        if item.base is None:
            raise ValueError(f"{where}.base: missing; add base: {root} (the SFT checkpoint its chain starts "
                             "from: DVC pairs the round with that checkpoint's episodes)")
        if item.base != root:
            raise ValueError(f"{where}.base: {item.base!r}, but its chain starts from {root!r} "
                             f"(set base: {root}; DVC pairs the round with that checkpoint's episodes)")
        buffer_root, seen = item.buffer_in, {name}
        while buffer_root in self.rounds:
            if buffer_root in seen:
                raise ValueError(f"{where}.buffer_in: the rounds' buffers form a cycle through {buffer_root!r}")
            seen.add(buffer_root)
            buffer_root = self.rounds[buffer_root].buffer_in
        if buffer_root != ROOT_DEMOS[root]:
            raise ValueError(f"{where}.buffer_in: its buffers go back to {buffer_root!r}, but a chain from {root} "
                             f"learns only from {ROOT_DEMOS[root]!r} (the demos {root} was trained on)")
        if item.policy_in in self.rounds and self.rounds[item.policy_in].chain != item.chain:
            raise ValueError(f"{where}.chain: {item.chain!r}, but {item.policy_in} before it is in chain "
                             f"{self.rounds[item.policy_in].chain!r}; a chain keeps one label")
        self.round_params(name)

    def chain_root(self, name: str) -> str:
        """The SFT checkpoint the chain of round `name` (ACPPO or iRe-VLA) starts from."""
        current = name
        while current in self.rounds or current in self.ire_rounds:
            current = (self.rounds.get(current) or self.ire_rounds[current]).policy_in
        return current

    def round_params(self, name: str) -> "Params":
        """These params as round `name` runs them: its `set` applied to ppo / bc / buffer."""
        updates = {}
        for section, overrides in self.rounds[name].set.items():
            if section not in ROUND_SECTIONS:
                raise ValueError(f"rounds.{name}.set: a round may change {' / '.join(ROUND_SECTIONS)}, "
                                 f"not {section!r}")
            updates[section] = _with_overrides(getattr(self, section), overrides, f"rounds.{name}.set.{section}",
                                               section)
        return self.model_copy(update=updates) if updates else self

    def offline_run(self, name: str) -> OfflineConfig:
        """The `offline` settings of run `name` (its `set` applied)."""
        if name not in self.offline_runs:
            raise PipelineError(f"unknown CO-RFT run {name!r}; params.yaml offline_runs has {sorted(self.offline_runs)}")
        return _with_overrides(self.offline, self.offline_runs[name].set, f"offline_runs.{name}.set", "offline")

    def sft_recipe(self, name: str = "sft") -> SFTConfig:
        """The SFT settings of recipe `name`: `sft`, `sft_offline` (CO-RFT's imitation step on its
        demo set) or `sft_small` (the small demo set): `sft` with the keys that section names replaced."""
        if name == "sft":
            return self.sft
        if name in SFT_RECIPES:
            return _with_overrides(self.sft, getattr(self, name), name, "sft")
        raise PipelineError(f"unknown SFT recipe {name!r}; expected 'sft', {', '.join(map(repr, SFT_RECIPES))}")

    def _offline_runs(self) -> None:
        import re

        if self.offline.td_chunk > self.policy.chunk_len:
            raise ValueError(f"offline.td_chunk ({self.offline.td_chunk}) is longer than the policy's chunk "
                             f"(policy.chunk_len {self.policy.chunk_len})")
        for name, item in self.offline_runs.items():
            if not re.match(ROUND_NAME, name) or name in RESERVED_NAMES \
                    or name in self.rounds or name in self.ire_rounds:
                raise ValueError(f"offline_runs: bad run name {name!r} (lowercase letters, digits, - and _; "
                                 f"not {'/'.join(RESERVED_NAMES)} nor a round's name)")
            merged = _with_overrides(self.offline, item.set, f"offline_runs.{name}.set", "offline")
            if merged.td_chunk > self.policy.chunk_len:
                raise ValueError(f"offline_runs.{name}.set.td_chunk ({merged.td_chunk}) is longer than the "
                                 f"policy's chunk (policy.chunk_len {self.policy.chunk_len})")

    def _ire_chain(self) -> None:
        """iRe-VLA rounds: names apart from ACPPO's, predecessors earlier in the list and in the
        same chain, kinds that fit, and `base` / `demos` naming the SFT the chain starts from."""
        import re

        names = list(self.ire_rounds)
        for i, (name, item) in enumerate(self.ire_rounds.items()):
            where = f"ire_rounds.{name}"
            if not re.match(ROUND_NAME, name) or name in RESERVED_NAMES or name in self.rounds:
                raise ValueError(f"ire_rounds: bad round name {name!r} (lowercase letters, digits, - and _; "
                                 f"not {'/'.join(RESERVED_NAMES)} nor an ACPPO round's name)")
            if item.policy_in not in ROOT_CHECKPOINTS and item.policy_in not in names[:i]:
                raise ValueError(f"{where}.policy_in: {item.policy_in!r} is neither {' / '.join(ROOT_CHECKPOINTS)} "
                                 "nor an iRe-VLA round listed before it")
            root = self.chain_root(name)
            for key, expected in (("base", root), ("demos", ROOT_DEMOS[root])):
                if getattr(item, key) != expected:
                    said = "missing" if getattr(item, key) is None else repr(getattr(item, key))
                    raise ValueError(f"{where}.{key}: {said}, but its chain starts from {root!r}: set {key}: "
                                     f"{expected} (DVC reads it to pair the round and find its demos)")
            if item.buffer_in != item.demos and (item.buffer_in not in names[:i]
                                                  or self.ire_rounds[item.buffer_in].base != item.base):
                raise ValueError(f"{where}.buffer_in: {item.buffer_in!r} is neither {item.demos} (an empty D_RL) "
                                 f"nor an iRe-VLA round of the same chain listed before it")
            if item.kind == "sl" and item.buffer_in == item.demos:
                raise ValueError(f"{where}: an sl round learns from the demos plus an RL round's successes; "
                                 f"buffer_in must name an iRe-VLA round (its D_RL), not {item.demos!r}")
        for name, demos in self.ire.baselines.items():
            if name not in ROOT_CHECKPOINTS and name not in self.rounds:
                raise ValueError(f"ire.baselines: {name!r} is neither {' / '.join(ROOT_CHECKPOINTS)} nor an ACPPO round")
            expected = ROOT_DEMOS[self.chain_root(name)]
            if demos != expected:
                raise ValueError(f"ire.baselines.{name}: {demos!r}, but {name} comes from {expected!r} "
                                 f"(its groups are drawn from the demos its SFT learned): set {name}: {expected}")

def _with_overrides(base: Section, overrides: dict[str, Any], where: str, kind: str) -> Section:
    """`base` with the keys of `overrides` replaced, validated as a whole; errors name `where`.<key>."""
    model = type(base)
    unknown = sorted(set(overrides) - set(model.model_fields))
    if unknown:
        raise ValueError(f"{where}: unknown {kind} keys {unknown}")
    try:
        return model.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}.{key}: {first['msg']} (got {first.get('input')!r})") from None


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (for 'did you mean' hints)."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _format_error(err: dict, source: str) -> str:
    loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
    key = ".".join(str(p) for p in loc) or "<top level>"
    if err["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _known_keys(Params, loc), n=1)
        extra = f" (did you mean '{'.'.join(map(str, loc[:-1] + (hint[0],)))}'?)" if hint else ""
        return f"{source}: unknown key '{key}'{extra}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections: the message names its keys itself
        return f"{source}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {key}: {msg}{shown}"


def parse_params(raw: Any, source: str = DEFAULT_PARAMS_FILE) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e, source) for e in exc.errors()]
        raise PipelineError("invalid parameters:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"params file not found: {path}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, source=str(path))
