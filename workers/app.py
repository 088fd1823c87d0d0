"""The Celery application: queues, routing, and fault-tolerance settings.

Broker and result backend come from URLs: Redis or RabbitMQ and a database at scale; the
embedded default needs no server (kombu's SQLAlchemy transport and Celery's database result
backend, both on SQLite files under $PROVER_HOME).
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from kombu import Queue

QUEUES = ("generate", "train", "verify", "control")


def prover_home() -> Path:
    home = Path(os.environ.get("PROVER_HOME", Path.home() / ".local/share/selfplay-prover"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def broker_url() -> str:
    return os.environ.get("PROVER_BROKER_URL") or f"sqla+sqlite:///{prover_home() / 'broker.db'}"


def result_backend() -> str:
    return os.environ.get("PROVER_RESULT_BACKEND") or f"db+sqlite:///{prover_home() / 'results.db'}"


def make_app(broker: str | None = None, backend: str | None = None) -> Celery:
    broker = broker or broker_url()
    app = Celery("selfplay_prover", broker=broker, backend=backend or result_backend(),
                 include=["workers.tasks"])
    transport_options = {}
    if broker.split("://", 1)[0] in ("redis", "rediss", "sqs"):
        # Redis/SQS redeliver a message not acknowledged within this time (a worker killed
        # outright); keep it above the longest task's time limit. (Other transports take
        # no such option: the SQLAlchemy one would pass it to create_engine.)
        transport_options["visibility_timeout"] = int(
            os.environ.get("PROVER_VISIBILITY_TIMEOUT", "3600"))
    app.conf.update(
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="control",
        task_routes={
            "workers.tasks.verify_*": {"queue": "verify"},
            "workers.tasks.generate_*": {"queue": "generate"},
            "workers.tasks.train_*": {"queue": "train"},
        },
        # A task is acknowledged only after it finished, and a task whose worker died is
        # re-queued: every task is idempotent (attempt keys, upserts), so redelivery is safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
    )
    return app


app = make_app()
