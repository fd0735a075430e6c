"""OpenWhisk packages (issue 17): fn_packages holds packages and bindings (`binding` names the bound
package), `publish` shares one with every namespace. An action inside a package is a row of fn_actions
named "package/action". Activations are listed by their subject (who invoked them: a shared package's
action runs in its owner's namespace for another namespace's caller), hence the index.

Revision ID: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fn_packages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.Column("annotations", sa.Text, nullable=False),
        sa.Column("binding", sa.Text, nullable=True),
        sa.Column("publish", sa.Boolean, nullable=False),
        sa.Column("updated", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("namespace", "name", name="uq_fn_packages_name"),
    )
    op.create_index("ix_fn_activations_subject", "fn_activations", ["subject", "created"])


def downgrade() -> None:
    op.drop_index("ix_fn_activations_subject", "fn_activations")
    op.drop_table("fn_packages")
