"""CO-RFT step 2: chunked offline RL on the demonstrations, from the SFT checkpoint.

- `targets`: the chunked TD targets (prefix returns, termination, bootstrap rows, return-to-go);
- `readouts`: the trunk's readout tokens the critic and the actor read (cached or live);
- `critic`: the chunk critic ensemble, its file names, the Polyak update;
- `losses`: the conservative (Cal-QL / CQL) term and the TD3+BC actor loss;
- `loop`: the critic and actor steps and the training loop, `train_offline`.
"""
