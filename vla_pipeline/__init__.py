"""vla-pipeline: post-train vision-language-action policies with RL, as a DVC pipeline."""

import os

# Headless MuJoCo rendering must be chosen before mujoco is imported anywhere, and
# worker processes started with `spawn` inherit it from os.environ.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
# Mesa's llvmpipe rasterises an 84 px frame on as many threads as there are cores; with one
# env worker per core those threads only contend. 0 renders in the calling thread: the same
# pixels (tests/test_envs.py), and the two-worker collector ~6 % faster (README, benchmark).
os.environ.setdefault("LP_NUM_THREADS", "0")

__version__ = "0.1.0"
