"""Every way the policy is trained, in the order the pipeline uses them.

- `behaviour_cloning`: the masked chunk cloning loss and its augmentation, shared by SFT,
  ACPPO's self-BC term and iRe-VLA's supervised rounds;
- `supervised`: SFT, the warm start on the demos (`train_sft`, `train_on_windows`);
- `success_buffer`, `rounds`: what RL rounds keep (the shortest successes) and how a round
  finds, seeds and writes its inputs and outputs;
- `ppo/`: ACPPO, chunked PPO plus the self-BC term (`ppo.trainer.run_round`);
- `ire`: iRe-VLA, RL rounds with the trunk frozen alternating with supervised rounds;
- `corft/`: CO-RFT's offline RL on the demos (`corft.loop.train_offline`).

A module here imports only the layers below (config, envs, data, policies) and the modules
listed before it; never evaluation, report or bench.
"""
