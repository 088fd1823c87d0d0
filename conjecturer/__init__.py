"""The conjecturer: STP self-play conjecturing and Goedel-Prover-V2 scaffolding.

- :mod:`conjecturer.seeds` — seed selection (solved statement, proof, lemma)
- :mod:`conjecturer.prompts` — the conjecture prompt, parsing, statement normalization
- :mod:`conjecturer.filters` — dedup, validity, decontamination, barely provable, elegance
- :mod:`conjecturer.relevance` — embedding-based re-weighting
- :mod:`conjecturer.scaffold` — sub-goals of failed proofs and their negations
- :mod:`conjecturer.dataset` — training sets for the prover and conjecturer roles
- :mod:`conjecturer.store` — database reads and writes (and the README SQL)
- :mod:`conjecturer.pipeline` — :func:`run_conjecture_round` and its steps
"""

from conjecturer.pipeline import (
    ConjectureConfig,
    RoundReport,
    attempt_conjectures,
    build_training_sets,
    generate_conjectures,
    run_conjecture_round,
    scaffold_round,
    select_conjectures,
)
from conjecturer.prompts import (
    alpha_key,
    conjecture_completion,
    conjecture_prompt,
    parse_conjecture,
)
from conjecturer.store import BARELY_PROVABLE_SQL

__all__ = [
    "BARELY_PROVABLE_SQL",
    "ConjectureConfig",
    "RoundReport",
    "alpha_key",
    "attempt_conjectures",
    "build_training_sets",
    "conjecture_completion",
    "conjecture_prompt",
    "generate_conjectures",
    "parse_conjecture",
    "run_conjecture_round",
    "scaffold_round",
    "select_conjectures",
]
