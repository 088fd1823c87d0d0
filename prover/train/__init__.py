"""Training: weighted SFT / expert iteration (:mod:`.sft`), RL with the verifier as reward
(:mod:`.rl`, :mod:`.rewards`), checkpoint averaging (:mod:`.average`) and the checkpoint
registry (:mod:`.registry`). CLI: :data:`prover.train.cli.train_app` (``prover train ...``).

Submodules are imported on use: ``import prover.train`` does not import torch or TRL.
"""

__all__ = ["average", "cli", "registry", "rewards", "rl", "sft"]
