"""The base of every params.yaml section model, and checks several sections share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_device(cls, device: str) -> str:
    """The `device` validator of the sections that run torch."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError("device must be 'cpu', 'cuda' or 'cuda:N'")
    return device
