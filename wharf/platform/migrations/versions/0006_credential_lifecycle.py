"""credentials: expiry and allow-lists of models and services

expires_at: refused from then on (NULL: never; a rotated credential's grace period
ends there). allowed_models / allowed_services: JSON lists of model names and service
ids the credential may use (NULL: any). See wharf/platform/key_scope.py.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 13:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('allowed_models', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('allowed_services', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_column('allowed_services')
        batch_op.drop_column('allowed_models')
        batch_op.drop_column('expires_at')
