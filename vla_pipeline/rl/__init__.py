"""RL and cloning objectives on action chunks."""
