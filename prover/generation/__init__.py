"""Generation backends behind one interface (see :mod:`prover.generation.base`)."""

from prover.generation.base import (
    BACKENDS,
    ChatMessage,
    Completion,
    GenerationError,
    Generator,
    ProgressCallback,
    SamplingParams,
    apply_stop,
    make_generator,
)

__all__ = [
    "BACKENDS",
    "ChatMessage",
    "Completion",
    "GenerationError",
    "Generator",
    "ProgressCallback",
    "SamplingParams",
    "apply_stop",
    "make_generator",
]
