"""The role model is written once (bootstrap/core/permissions.py) and everyone reads that copy."""

import subprocess
import sys

import pytest

from bootstrap.core import permissions
from bootstrap.core.permissions import NAMESPACE_ROLES, ROLE_BITS, SYSTEM_NAMESPACE, implied, split_permission


def test_roles_are_temporals_bit_flags_lowest_first():
    assert ROLE_BITS == {"worker": 1, "read": 2, "write": 4, "admin": 8}
    assert NAMESPACE_ROLES == ("worker", "read", "write", "admin")
    assert SYSTEM_NAMESPACE == "temporal-system"


@pytest.mark.parametrize("value, parts", [
    ("orders:write", ("orders", "write")),
    ("orders:Admin", ("orders", "Admin")),
    (":read", ("", "read")),
    ("orders", None), ("a:b:c", None), (["orders:read"], None), (None, None),
])
def test_split_permission(value, parts):
    assert split_permission(value) == parts


def test_a_role_implies_the_lower_ones_on_its_scope_only():
    assert implied(("orders:write", f"{SYSTEM_NAMESPACE}:read")) == {
        "orders:worker", "orders:read", "orders:write", f"{SYSTEM_NAMESPACE}:worker", f"{SYSTEM_NAMESPACE}:read"}
    assert implied(("orders:worker",)) == {"orders:worker"}


def test_config_auth_and_gate_share_the_one_model():
    from bootstrap.core import config
    from bootstrap.core.config import sections
    from bootstrap.servers import auth, gate

    assert config.SYSTEM_NAMESPACE is auth.SYSTEM_NAMESPACE is permissions.SYSTEM_NAMESPACE
    assert config.NAMESPACE_ROLES is permissions.NAMESPACE_ROLES
    assert auth.ROLE_BITS is permissions.ROLE_BITS
    assert auth.role_for is permissions.role_for and auth.grants is permissions.grants
    assert gate.grants is permissions.grants
    assert set(sections.CODEC_DECRYPT_ROLES) == set(NAMESPACE_ROLES) - {"worker"}


def test_the_model_loads_no_jwt_or_crypto_library():
    code = "import sys, bootstrap.core.permissions; print(sorted({'jwt', 'cryptography'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
