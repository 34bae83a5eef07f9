"""Initial schema: registry, minute windows, rollups, regional load, events, gaps, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from segs.hub.db.types import ID_TYPE, UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rows updated in place by every commit keep free room for HOT updates.
_FILLFACTOR = {"fillfactor": 50}


def _id(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, ID_TYPE, nullable=nullable)


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, UtcDateTime(), nullable=nullable)


def _double(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, sa.Double(), nullable=nullable)


def _rollup_table(name: str) -> None:
    op.create_table(
        name,
        _id("meter_id"),
        _time("bucket_start"),
        _id("region"),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.BigInteger(), nullable=False),
        sa.Column("samples_got", sa.BigInteger(), nullable=False),
        sa.Column("samples_expected", sa.BigInteger(), nullable=False),
        _double("import_kwh"),
        _double("export_kwh"),
        _double("power_min_kw"),
        _double("power_avg_kw"),
        _double("power_max_kw"),
        _time("first_window_start"),
        _double("first_import_kwh"),
        _double("first_export_kwh"),
        _time("last_window_start"),
        _double("last_import_kwh"),
        _double("last_export_kwh"),
        sa.PrimaryKeyConstraint("meter_id", "bucket_start", name=op.f(f"pk_{name}")),
        postgresql_with=_FILLFACTOR,
    )


def upgrade() -> None:
    """Create every table of the hub's first schema."""
    op.create_table(
        "regions",
        _id("name"),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        _double("capacity_kw"),
        sa.Column("currency", sa.String(length=3), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_regions")),
    )
    op.create_table(
        "gateways",
        _id("gateway_id"),
        _id("region"),
        sa.Column("credential_hash", sa.String(length=255), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("config_hash", sa.String(length=64), nullable=True),
        sa.Column("window_seconds", sa.Integer(), nullable=True),
        _time("started_at", nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        _time("last_seen_at", nullable=True),
        _time("state_changed_at", nullable=True),
        sa.Column("highest_seq", sa.BigInteger(), nullable=False),
        sa.Column("ingest_version", sa.BigInteger(), nullable=False),
        sa.Column("outbox_pending_batches", sa.BigInteger(), nullable=True),
        sa.Column("outbox_dropped_batches", sa.BigInteger(), nullable=True),
        sa.Column("outbox_dropped_windows", sa.BigInteger(), nullable=True),
        sa.Column("auto_registered", sa.Boolean(), nullable=False),
        _time("registered_at"),
        sa.ForeignKeyConstraint(
            ["region"], ["regions.name"], name=op.f("fk_gateways_region_regions")
        ),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f("pk_gateways")),
    )
    op.create_index(op.f("ix_gateways_region"), "gateways", ["region"])
    op.create_table(
        "meters",
        _id("meter_id"),
        _id("gateway_id"),
        _id("region"),
        _id("profile", nullable=True),
        _id("bus", nullable=True),
        sa.Column("unit_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        _id("customer_id", nullable=True),
        _time("installed_at", nullable=True),
        sa.Column("auto_registered", sa.Boolean(), nullable=False),
        _time("registered_at"),
        sa.ForeignKeyConstraint(
            ["gateway_id"], ["gateways.gateway_id"], name=op.f("fk_meters_gateway_id_gateways")
        ),
        sa.ForeignKeyConstraint(
            ["region"], ["regions.name"], name=op.f("fk_meters_region_regions")
        ),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_meters")),
    )
    op.create_index(op.f("ix_meters_customer_id"), "meters", ["customer_id"])
    op.create_index(op.f("ix_meters_gateway_id"), "meters", ["gateway_id"])
    op.create_index(op.f("ix_meters_region"), "meters", ["region"])

    op.create_table(
        "meter_windows",
        _id("meter_id"),
        _time("window_start"),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        _double("import_kwh"),
        _double("export_kwh"),
        _double("import_delta_kwh"),
        _double("export_delta_kwh"),
        _double("power_min_kw"),
        _double("power_avg_kw"),
        _double("power_max_kw"),
        _double("voltage_avg_v", nullable=True),
        _double("current_avg_a", nullable=True),
        _double("power_factor_avg", nullable=True),
        _double("frequency_avg_hz", nullable=True),
        sa.Column("samples_got", sa.Integer(), nullable=False),
        sa.Column("samples_expected", sa.Integer(), nullable=False),
        sa.Column("quality", sa.String(length=200), nullable=False),
        _id("region"),
        sa.Column("counter_break", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "window_start", name=op.f("pk_meter_windows")),
    )
    # BRIN on PostgreSQL: windows arrive roughly in time order, and retention scans
    # by time; a B-tree would cost every insert another index descent.
    op.create_index(
        "ix_meter_windows_window_start",
        "meter_windows",
        ["window_start"],
        postgresql_using="brin",
    )
    _rollup_table("meter_rollups_15m")
    _rollup_table("meter_rollups_daily")
    op.create_table(
        "regional_load",
        _id("region"),
        _time("minute"),
        _double("total_kw"),
        sa.Column("meters_reporting", sa.Integer(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        _double("capacity_kw"),
        _double("load_factor"),
        sa.PrimaryKeyConstraint("region", "minute", name=op.f("pk_regional_load")),
        postgresql_with=_FILLFACTOR,
    )
    op.create_table(
        "meter_gaps",
        _id("meter_id"),
        _time("gap_start"),
        _time("gap_end"),
        _time("detected_at"),
        sa.PrimaryKeyConstraint("meter_id", "gap_start", name=op.f("pk_meter_gaps")),
    )
    op.create_table(
        "meter_events",
        _id("meter_id"),
        sa.Column("kind", sa.String(length=32), nullable=False),
        _time("at"),
        _id("gateway_id"),
        _id("region"),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        _time("received_at"),
        sa.PrimaryKeyConstraint("meter_id", "kind", "at", name=op.f("pk_meter_events")),
    )
    op.create_index(op.f("ix_meter_events_gateway_id"), "meter_events", ["gateway_id"])
    op.create_table(
        "dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
            autoincrement=True,
        ),
        _time("received_at"),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        _id("gateway_id", nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        _id("hub_id", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_gateway_id"), "dead_letters", ["gateway_id"])
    op.create_index(op.f("ix_dead_letters_reason"), "dead_letters", ["reason"])
    op.create_index(op.f("ix_dead_letters_received_at"), "dead_letters", ["received_at"])


def downgrade() -> None:
    """Drop every table (their data with them)."""
    for table in (
        "dead_letters",
        "meter_events",
        "meter_gaps",
        "regional_load",
        "meter_rollups_daily",
        "meter_rollups_15m",
        "meter_windows",
        "meters",
        "gateways",
        "regions",
    ):
        op.drop_table(table)
