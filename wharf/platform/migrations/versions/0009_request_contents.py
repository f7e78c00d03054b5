"""request_contents: prompts and outputs, stored only for accounts that opt in

accounts.content_retention_days (NULL: never stored; n: kept n days) and
request_contents, one row per request of such an account, deleted from its expires_at
on (wharf/platform/request_content.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_retention_days', sa.Integer(), nullable=True))
    op.create_table(
        'request_contents',
        sa.Column('request_id', sa.String(length=64), nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.Column('prompt', sa.Text(), nullable=False),
        sa.Column('outputs', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['accounts.id'],
                                name=op.f('fk_request_contents_account_id_accounts'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('request_id', name=op.f('pk_request_contents')),
    )
    op.create_index(op.f('ix_request_contents_account_id'), 'request_contents', ['account_id'], unique=False)
    op.create_index(op.f('ix_request_contents_expires_at'), 'request_contents', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_request_contents_expires_at'), table_name='request_contents')
    op.drop_index(op.f('ix_request_contents_account_id'), table_name='request_contents')
    op.drop_table('request_contents')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('content_retention_days')
