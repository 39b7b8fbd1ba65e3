"""Checks of the machine, before a stage does any work: torch device, offscreen OpenGL.

`config.py` checks what a params file says; this module checks that this machine can do
it. Each failure is one `PipelineError` sentence that says what to change, instead of a
CUDA or GL traceback from deep inside torch or MuJoCo (or from every env worker).
"""

from __future__ import annotations

import os
import warnings

from vla_pipeline.errors import PipelineError

DEVICE_KEYS = ("sft.device", "ppo.device", "evaluate.device")


def check_device(device: str, key: str) -> None:
    """`device` ('cpu', 'cuda', 'cuda:N') must exist here; `key` names it in the message."""
    if device == "cpu":
        return
    import torch

    suffix = device.partition(":")[2]
    if device != "cuda" and not (device.startswith("cuda:") and suffix.isdigit()):
        raise PipelineError(f"{key}: unknown device {device!r} (use 'cpu', 'cuda' or 'cuda:N')")
    if not torch.version.cuda:
        raise PipelineError(f"{key} is {device!r}, but this torch {torch.__version__} is a CPU-only build: "
                            f"set {key}: cpu, or install a CUDA build of torch on a GPU machine")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(suffix or 0) >= count:
        raise PipelineError(f"{key} is {device!r}, but this machine has {count} usable CUDA device(s): "
                            f"set {key}: cpu or a device that exists")


def check_devices(params, keys: tuple[str, ...] = DEVICE_KEYS) -> None:
    for key in keys:
        section, _, field = key.partition(".")
        check_device(getattr(getattr(params, section), field), key)


def check_rendering() -> None:
    """MuJoCo must be able to open an offscreen GL context with this `MUJOCO_GL`.

    Probed in the main process before any env worker starts (a worker that cannot render
    prints its own traceback, one per env). Costs the `import mujoco` a stage needs anyway.
    """
    backend = os.environ.get("MUJOCO_GL", "")
    hint = "on a machine without a display use MUJOCO_GL=egl (the default; `bash scripts/setup.sh` installs Mesa EGL)"
    if backend == "glfw" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise PipelineError(f"MUJOCO_GL=glfw needs a display, and DISPLAY is not set: {hint}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # glfw reports its failures as warnings first
            import mujoco

            model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='.1'/></worldbody></mujoco>")
            context = mujoco.GLContext(8, 8)
            try:
                context.make_current()
                mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100).free()
            finally:
                context.free()
    except Exception as exc:  # whatever the GL backend raises: import, context or MjrContext
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(f"MuJoCo cannot render offscreen with MUJOCO_GL={backend or '(unset)'} "
                            f"({reason}): {hint}") from None


def check_ray_address(params, timeout: float = 1.0) -> None:
    """`env.vector: ray` with `env.ray.address: host:port`: something must accept a TCP connection
    there (one connect to the configured address, `timeout` seconds), so that an unreachable
    cluster stops `check_params` before DVC deletes any stage's outputs. `auto` and null
    (start Ray here) are not probed."""
    import socket

    address = params.env.ray.address
    if params.env.vector != "ray" or not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port: Ray says what it makes of it
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PipelineError(f"env.ray.address {address!r}: nothing answers there ({reason}); start the Ray head "
                            "(`ray start --head`), fix the address, or set env.ray.address: null to start Ray "
                            "in the stage") from None
