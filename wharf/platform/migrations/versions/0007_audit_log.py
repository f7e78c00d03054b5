"""audit_log: who changed what through the admin API or the CLI

One row per changed account, credential, service or lexicon, written in the change's
own transaction (wharf/platform/audit.py). Listed newest first by id, everyone's or one
account's (ix_audit_log_account).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:20:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'audit_log',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('actor', sa.String(length=16), nullable=False),
        sa.Column('actor_account_id', sa.Integer(), nullable=True),
        sa.Column('actor_credential_id', sa.Integer(), nullable=True),
        sa.Column('source', sa.String(length=256), nullable=False),
        sa.Column('object_type', sa.String(length=16), nullable=False),
        sa.Column('object_id', sa.Integer(), nullable=True),
        sa.Column('account_id', sa.Integer(), nullable=True),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('before', sa.Text(), nullable=True),
        sa.Column('after', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    )
    op.create_index('ix_audit_log_account', 'audit_log', ['account_id', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_audit_log_account', table_name='audit_log')
    op.drop_table('audit_log')
