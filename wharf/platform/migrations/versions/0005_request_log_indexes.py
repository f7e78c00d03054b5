"""the request log: indexes for its filters on usage_records

Every usage record is a request-log entry (request id, dialect, status, latency, TTFT
are already there). Listing them newest first with a filter on the account, credential
or service, or on a time range alone, walks one of these indexes in (created_at, id)
order, which is also the keyset cursor: a page costs the same at row 10 as at row 10 M.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:00:00.000000
"""

from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

INDEXES = {
    'ix_usage_records_created': ['created_at', 'id'],
    'ix_usage_records_account_created': ['account_id', 'created_at', 'id'],
    'ix_usage_records_credential_created': ['credential_id', 'created_at', 'id'],
    'ix_usage_records_service_created': ['service_id', 'created_at', 'id'],
}


def upgrade() -> None:
    for name, cols in INDEXES.items():
        op.create_index(name, 'usage_records', cols)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name='usage_records')
