"""Guarded offscreen rendering of a MetaWorld env with MuJoCo's own `Renderer`.

We do not use gymnasium's private viewer: `mujoco.Renderer` is public API, lets us set the
multisampling count before the GL context exists, and we make its context current before
every frame, so several envs in one process never render black frames (env-probe.md 2b).
One renderer (one GL context) serves every camera of the env.
"""

from __future__ import annotations

import mujoco
import numpy as np

from vla_pipeline.config import EnvConfig
from vla_pipeline.errors import PipelineError
from vla_pipeline.metaworld_names import ROTATED_CAMERAS, check_camera_name


class BlackFrameError(PipelineError):
    """The renderer returned an all-black frame (lost GL context); never train on it."""


def _gl_hint(exc: Exception) -> PipelineError:
    import os

    backend = os.environ.get("MUJOCO_GL", "")
    return PipelineError(
        f"cannot create an offscreen OpenGL context with MUJOCO_GL={backend!r} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); on a headless machine set MUJOCO_GL=egl "
        "(Mesa's EGL: scripts/setup.sh installs it)")


class FrameRenderer:
    """Renders one frame per camera, right way up: (V, size, size, 3) uint8.

    The camera layout comes from the env settings: `cameras` in order, `image_size`,
    `camera_fovy` and the `render` options."""

    def __init__(self, model: mujoco.MjModel, env: EnvConfig):
        cameras, size, render, fovy = env.cameras, env.image_size, env.render, env.camera_fovy
        for camera in cameras:
            check_camera_name(camera)
            camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            if camera_id < 0:
                raise PipelineError(f"camera '{camera}' does not exist in this MetaWorld model")
            if fovy and camera in fovy:
                # A camera's field of view only affects rendering; this model is the env's own.
                model.cam_fovy[camera_id] = float(fovy[camera])
        # Fixed when the GL context is created: must be set before mujoco.Renderer().
        model.vis.quality.offsamples = 4 if render.multisampling else 0
        try:
            self._renderer = mujoco.Renderer(model, height=size, width=size)
        except Exception as exc:  # GLFW/OSMesa/EGL each raise their own types
            raise _gl_hint(exc) from None
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(render.shadows)
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(render.reflections)
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = int(render.skybox)
        self.cameras = tuple(cameras)
        self.frames_rendered = 0

    def render_camera(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        gl_context = getattr(self._renderer, "_gl_context", None)
        if gl_context is not None:
            gl_context.make_current()
        self._renderer.update_scene(data, camera=camera)
        frame = self._renderer.render()
        if camera in ROTATED_CAMERAS:
            frame = frame[::-1, ::-1]  # a 180-degree rotation, not a mirror
        if not frame.any():
            raise BlackFrameError(f"camera '{camera}' rendered an all-black frame (GL context lost?)")
        self.frames_rendered += 1
        return np.ascontiguousarray(frame)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        return np.stack([self.render_camera(data, camera) for camera in self.cameras])

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
