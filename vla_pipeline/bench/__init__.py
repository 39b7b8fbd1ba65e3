"""Benchmarks of the pipeline's speed (the top layer: they run every other part).

- `throughput`: raw MetaWorld, the chunk collector, SFT and PPO updates (`stages bench`);
- `scale`: Ray env workers and data-parallel SFT ranks (`stages bench-scale`);
- `measure`: one figure in a spawned child process, its peak memory, the machine facts;
- `jobs`: what each child sets up and times.
"""
