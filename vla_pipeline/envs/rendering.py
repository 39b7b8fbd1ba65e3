"""Guarded offscreen rendering of a MetaWorld env with MuJoCo's own `Renderer`.

We do not use gymnasium's private viewer: `mujoco.Renderer` is public API, lets us set the
multisampling count before the GL context exists, and we make its context current before
every frame, so several envs in one process never render black frames (env-probe.md 2b).
"""

from __future__ import annotations

import mujoco
import numpy as np

from vla_pipeline.config import RenderConfig
from vla_pipeline.envs.tasks import ROTATED_CAMERAS, check_camera_name
from vla_pipeline.errors import PipelineError


class BlackFrameError(PipelineError):
    """The renderer returned an all-black frame (lost GL context); never train on it."""


class FrameRenderer:
    def __init__(self, model: mujoco.MjModel, camera: str, size: int, render: RenderConfig):
        check_camera_name(camera)
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise PipelineError(f"camera '{camera}' does not exist in this MetaWorld model")
        # Fixed when the GL context is created: must be set before mujoco.Renderer().
        model.vis.quality.offsamples = 4 if render.multisampling else 0
        self._renderer = mujoco.Renderer(model, height=size, width=size)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(render.shadows)
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(render.reflections)
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = int(render.skybox)
        self.camera = camera
        self._rotate = camera in ROTATED_CAMERAS
        self.frames_rendered = 0

    def render(self, data: mujoco.MjData) -> np.ndarray:
        gl_context = getattr(self._renderer, "_gl_context", None)
        if gl_context is not None:
            gl_context.make_current()
        self._renderer.update_scene(data, camera=self.camera)
        frame = self._renderer.render()
        if self._rotate:
            frame = frame[::-1, ::-1]  # a 180-degree rotation, not a mirror
        if not frame.any():
            raise BlackFrameError(
                f"camera '{self.camera}' rendered an all-black frame (GL context lost?)"
            )
        self.frames_rendered += 1
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
