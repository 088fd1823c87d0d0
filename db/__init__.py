"""The proof database (a leaf package: knows nothing of models, Lean or Celery)."""

from db.session import get_engine, make_engine, resolve_url, session_scope

__all__ = ["get_engine", "make_engine", "resolve_url", "session_scope"]
