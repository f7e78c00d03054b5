"""credentials: their own daily quota (characters and tokens) on top of the account's

credentials.quota_chars_per_day / quota_tokens_per_day (NULL: none of its own, 0: nothing
allowed) and quota_root_id (the counters it counts on: the first credential of its
rotation line; NULL: its own); credential_quota_usage holds those daily counters as
quota_usage holds an account's, and quota_reservations.credential_id says which ones a
reservation also holds. See wharf/platform/quota.py.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 20:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quota_chars_per_day', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('quota_tokens_per_day', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('quota_root_id', sa.Integer(), nullable=True))
    with op.batch_alter_table('quota_reservations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('credential_id', sa.Integer(), nullable=True))
    op.create_table(
        'credential_quota_usage',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('credential_id', sa.Integer(), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('chars_used', sa.BigInteger(), nullable=False),
        sa.Column('tokens_used', sa.BigInteger(), nullable=False),
        sa.Column('chars_reserved', sa.BigInteger(), nullable=False),
        sa.Column('tokens_reserved', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['credential_id'], ['credentials.id'],
                                name=op.f('fk_credential_quota_usage_credential_id_credentials'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_credential_quota_usage')),
        sa.UniqueConstraint('credential_id', 'day', name=op.f('uq_credential_quota_usage_credential_id')),
    )


def downgrade() -> None:
    op.drop_table('credential_quota_usage')
    with op.batch_alter_table('quota_reservations', schema=None) as batch_op:
        batch_op.drop_column('credential_id')
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_column('quota_root_id')
        batch_op.drop_column('quota_tokens_per_day')
        batch_op.drop_column('quota_chars_per_day')
