"""vla-pipeline: post-train vision-language-action policies with RL, as a DVC pipeline."""

import os

# Headless MuJoCo rendering must be chosen before mujoco is imported anywhere, and
# worker processes started with `spawn` inherit it from os.environ.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

__version__ = "0.1.0"
