"""services remember the API address the user typed; endpoints get a random prefix

Seed 001/004: creating a service with the API address "test1" gives the endpoint
"lbwxxxd4_test1" (Services.create draws the prefix). services.url_suffix keeps what the
user typed. Services made before this revision keep their endpoints, unprefixed, as
clients call them; their url_suffix is NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('services', schema=None) as batch_op:
        batch_op.add_column(sa.Column('url_suffix', sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('services', schema=None) as batch_op:
        batch_op.drop_column('url_suffix')
