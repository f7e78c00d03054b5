"""limit ceilings per account; a limit of 0 now means "nothing allowed"

1. accounts get the ceilings on what an account may give its own credentials
   (key_rpm, key_tpm, key_qps, key_max_concurrency) and services (service_rpm,
   service_tpm); NULL: no ceiling (wharf/platform/tenancy.py).
2. Until now rpm / tpm / qps / max_concurrency = 0 meant "no limit" while
   quota_*_per_day = 0 meant "nothing". From this revision 0 means "nothing allowed"
   everywhere and NULL means "no limit". Stored zeros are rewritten so that nothing
   changes for anyone: on credentials and services 0 becomes NULL (no limit); on
   accounts, where NULL means "the platform default (WHARF_DEFAULT_*)" and 0 meant "no
   limit, whatever the default", 0 becomes 2147483647 (the largest value the column
   holds: no limit in practice, and still not the default). The daily quotas keep their
   meaning and are not touched.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

CEILINGS = ('key_rpm', 'key_tpm', 'key_qps', 'key_max_concurrency', 'service_rpm', 'service_tpm')
UNLIMITED = 2147483647
RATE = ('rpm', 'tpm', 'qps', 'max_concurrency')


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        for name in CEILINGS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
    for col in RATE:
        op.execute(f"UPDATE accounts SET {col} = {UNLIMITED} WHERE {col} = 0")
        op.execute(f"UPDATE credentials SET {col} = NULL WHERE {col} = 0")
    for col in ('rpm', 'tpm'):
        op.execute(f"UPDATE services SET {col} = NULL WHERE {col} = 0")


def downgrade() -> None:
    # Back to "0 = no limit": what now means "nothing allowed" cannot be said there; such
    # limits become 1 (the least that still allows something), the big account values 0.
    for col in RATE:
        op.execute(f"UPDATE accounts SET {col} = 1 WHERE {col} = 0")
        op.execute(f"UPDATE accounts SET {col} = 0 WHERE {col} = {UNLIMITED}")
        op.execute(f"UPDATE credentials SET {col} = 1 WHERE {col} = 0")
    for col in ('rpm', 'tpm'):
        op.execute(f"UPDATE services SET {col} = 1 WHERE {col} = 0")
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        for name in reversed(CEILINGS):
            batch_op.drop_column(name)
