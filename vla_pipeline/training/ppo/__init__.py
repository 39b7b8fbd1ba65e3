"""ACPPO: action-chunked PPO with a self behaviour-cloning term, one DVC round at a time.

- `loss`: the clipped PPO objective on chunk likelihood ratios;
- `rollout_batch`: rollout storage and chunk-level GAE;
- `rollout`: the collector of chunk decisions from vector envs;
- `curriculum`: which task the next training episode runs;
- `bc_weight`: the weight w of the self-BC term in L = L_PPO + w * L_BC;
- `trainer`: the PPO trainer and a whole round (`run_round`).
"""
