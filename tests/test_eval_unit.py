"""Pure parts of the evaluation: specs, keys, chain outcomes."""

from __future__ import annotations

import pytest

from db.queries import AttemptView
from prover.eval import EvalSpec, attempt_key, chain_outcomes


def _view(sid, sample, rnd, status):
    return AttemptView(id=0, key=f"{sid}/{sample}/{rnd}", statement_id=sid, proof="p",
                       completion="c", mode="correction" if rnd else "whole-proof",
                       correction_round=rnd, parent_attempt_id=None, sample_index=sample,
                       status=status, reason=None)


def test_k_larger_than_n_is_rejected():
    with pytest.raises(ValueError, match="between 1 and n = 4"):
        EvalSpec(n=4, ks=(1, 8))


def test_run_name_is_stable_and_depends_on_what_changes_results():
    a, b = EvalSpec(n=4, ks=(1,)), EvalSpec(n=4, ks=(1, 4))
    assert a.run_name() == b.run_name()  # k is reporting only
    assert EvalSpec(n=4, temperature=0.5).run_name() != a.run_name()
    assert a.run_name().startswith("eval-minif2f-rocq-test-portfolio-")
    assert attempt_key("r", 3, 1, 2) == "r/3/1/r2"


def test_a_chain_succeeds_if_any_of_its_rounds_succeeds():
    views = [
        _view(1, 0, 0, "failed"), _view(1, 0, 1, "proved"),   # fixed by correction
        _view(1, 1, 0, "failed"), _view(1, 1, 1, "failed"),   # never fixed
        _view(2, 0, 0, "proved"),
        _view(3, 0, 0, None),                                 # not yet verified
    ]
    assert chain_outcomes(views) == {1: {0: True, 1: False}, 2: {0: True}, 3: {0: False}}
