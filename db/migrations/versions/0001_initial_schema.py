"""initial schema

Revision ID: 0001
Revises:
"""

from alembic import op
import sqlalchemy as sa


revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


VIEWS = {
    # Pass rate = proved / verified attempts, identical proofs counted with multiplicity.
    "statement_pass_rates": """
        SELECT s.id AS statement_id, s.itp, s.name, s.origin,
               COUNT(v.id) AS attempts,
               COALESCE(SUM(CASE WHEN v.status = 'proved' THEN 1 ELSE 0 END), 0) AS proved,
               CAST(SUM(CASE WHEN v.status = 'proved' THEN 1 ELSE 0 END) AS FLOAT)
                   / NULLIF(COUNT(v.id), 0) AS pass_rate
        FROM statements s
        LEFT JOIN attempts a ON a.statement_id = s.id
        LEFT JOIN verdicts v ON v.attempt_id = a.id
        GROUP BY s.id, s.itp, s.name, s.origin""",
    "statement_round_pass_rates": """
        SELECT a.statement_id, a.run_id, a.round_index,
               COUNT(*) AS attempts,
               SUM(CASE WHEN v.status = 'proved' THEN 1 ELSE 0 END) AS proved,
               CAST(SUM(CASE WHEN v.status = 'proved' THEN 1 ELSE 0 END) AS FLOAT) / COUNT(*)
                   AS pass_rate
        FROM attempts a
        JOIN verdicts v ON v.attempt_id = a.id
        GROUP BY a.statement_id, a.run_id, a.round_index""",
    "unproved_statements": """
        SELECT s.id AS statement_id, s.itp, s.name, s.origin
        FROM statements s
        WHERE NOT EXISTS (
            SELECT 1 FROM attempts a JOIN verdicts v ON v.attempt_id = a.id
            WHERE a.statement_id = s.id AND v.status = 'proved')""",
}


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "itp",
            sa.Enum(
                "lean", "coq", name="itp", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_datasets_name_version"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "index", name="uq_rounds_run_index"),
    )
    op.create_table(
        "statements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "itp",
            sa.Enum(
                "lean", "coq", name="itp", native_enum=False, create_constraint=True, length=32
            ),
            nullable=False,
        ),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("formal_statement", sa.Text(), nullable=False),
        sa.Column("informal", sa.Text(), nullable=True),
        sa.Column("norm_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "origin",
            sa.Enum(
                "benchmark",
                "conjecture",
                "scaffold-subgoal",
                "scaffold-negation",
                name="origin",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("parent_statement_id", sa.Integer(), nullable=True),
        sa.Column("parent_attempt_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("round_index", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # statements <-> attempts is a cycle: PostgreSQL gets this key after `attempts` exists.
        *(
            [
                sa.ForeignKeyConstraint(
                    ["parent_attempt_id"], ["attempts.id"], name="fk_statements_parent_attempt"
                )
            ]
            if _sqlite()
            else []
        ),
        sa.ForeignKeyConstraint(
            ["parent_statement_id"],
            ["statements.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("norm_hash"),
    )
    with op.batch_alter_table("statements", schema=None) as batch_op:
        batch_op.create_index("ix_statements_origin_round", ["origin", "round_index"], unique=False)

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=True),
        sa.Column(
            "stage",
            sa.Enum(
                "base",
                "sft",
                "expert-iteration",
                "rl",
                "averaged",
                name="checkpoint_stage",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("parent_ids", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("round_id", sa.Integer(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["round_id"],
            ["rounds.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("path"),
    )
    op.create_table(
        "dataset_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("statement_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("split", sa.String(length=50), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id", "name", name="uq_dataset_entries_name"),
    )
    with op.batch_alter_table("dataset_entries", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_entries_split", ["dataset_id", "split"], unique=False)
        batch_op.create_index("ix_dataset_entries_statement", ["statement_id"], unique=False)

    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("statement_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("round_index", sa.Integer(), nullable=True),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column(
            "mode",
            sa.Enum(
                "whole-proof",
                "correction",
                name="attempt_mode",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("correction_round", sa.Integer(), nullable=False),
        sa.Column("parent_attempt_id", sa.Integer(), nullable=True),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("completion", sa.Text(), nullable=True),
        sa.Column("proof", sa.Text(), nullable=True),
        sa.Column("helpers", sa.Text(), nullable=True),
        sa.Column("proof_hash", sa.String(length=64), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
        ),
        sa.ForeignKeyConstraint(
            ["parent_attempt_id"],
            ["attempts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_attempts_proof_hash", ["statement_id", "proof_hash"], unique=False
        )
        batch_op.create_index("ix_attempts_run_round", ["run_id", "round_index"], unique=False)
        batch_op.create_index("ix_attempts_statement", ["statement_id"], unique=False)

    op.create_table(
        "conjectures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("statement_id", sa.Integer(), nullable=False),
        sa.Column("seed_statement_id", sa.Integer(), nullable=False),
        sa.Column("seed_attempt_id", sa.Integer(), nullable=True),
        sa.Column("lemma", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("round_index", sa.Integer(), nullable=True),
        sa.Column("selected", sa.Boolean(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["seed_attempt_id"],
            ["attempts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["seed_statement_id"],
            ["statements.id"],
        ),
        sa.ForeignKeyConstraint(
            ["statement_id"],
            ["statements.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("statement_id"),
    )
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "proved",
                "failed",
                "timeout",
                "resource_limit",
                "rejected_unsound",
                "internal_error",
                name="verdict_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("axioms", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("backend_version", sa.String(length=200), nullable=False),
        sa.Column("sandboxed", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["attempt_id"], ["attempts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("attempt_id"),
    )
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.create_index("ix_verdicts_status", ["status"], unique=False)
    if not _sqlite():
        op.create_foreign_key(
            "fk_statements_parent_attempt", "statements", "attempts", ["parent_attempt_id"], ["id"]
        )
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    if not _sqlite():
        op.drop_constraint("fk_statements_parent_attempt", "statements", type_="foreignkey")
    with op.batch_alter_table("verdicts", schema=None) as batch_op:
        batch_op.drop_index("ix_verdicts_status")

    op.drop_table("verdicts")
    op.drop_table("conjectures")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_attempts_statement")
        batch_op.drop_index("ix_attempts_run_round")
        batch_op.drop_index("ix_attempts_proof_hash")

    op.drop_table("attempts")
    with op.batch_alter_table("dataset_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_dataset_entries_statement")
        batch_op.drop_index("ix_dataset_entries_split")

    op.drop_table("dataset_entries")
    op.drop_table("checkpoints")
    with op.batch_alter_table("statements", schema=None) as batch_op:
        batch_op.drop_index("ix_statements_origin_round")

    op.drop_table("statements")
    op.drop_table("rounds")
    op.drop_table("runs")
    op.drop_table("datasets")
