"""Secret rotation revokes on warm instances (docs/operations.md): the real admin binary,
warm under the emulator, reads its token again every SECRETS_REFRESH_SECONDS (60) by its
clock, so once the local clock has moved past the interval a rotated-away token is
refused, and the new one accepted."""

from __future__ import annotations

import uuid

import requests
from conftest import ADMIN
from kami_local import clock
from kami_local.provision import client, local_secrets


def _admin_status(platform, token: str) -> int:
    return requests.get(f"{platform.api}/admin/payments/unmatched", timeout=30,
                        headers={"Authorization": f"Bearer {token}"}).status_code


def test_a_rotated_admin_token_is_refused_by_a_warm_instance(platform):
    file = platform.log_dir / "clock"
    secrets = client("secretsmanager", platform.endpoint)
    secret_id = platform.resources["AdminTokenSecret"]
    original = local_secrets()["AdminTokenSecret"]
    rotated = f"rotated-admin-token-{uuid.uuid4().hex}"
    # GIVEN a warm admin instance
    assert _admin_status(platform, original) == 200
    try:
        # WHEN the token is rotated
        secrets.put_secret_value(SecretId=secret_id, SecretString=rotated)
        # THEN within the interval the warm instance has not read it again...
        assert _admin_status(platform, original) == 200
        # ...and once the interval has passed, by the functions' clock, it has
        clock.advance(clock.parse_duration("61s"), file)
        assert _admin_status(platform, original) == 401
        assert _admin_status(platform, rotated) == 200
    finally:
        secrets.put_secret_value(SecretId=secret_id, SecretString=original)
        clock.advance(clock.parse_duration("61s"), file)
        assert _admin_status(platform, original) == 200
        # Back to the machine's time: an instance whose clock steps back re-reads at once.
        clock.reset(file)
    assert requests.get(f"{platform.api}/admin/payments/unmatched", headers=ADMIN, timeout=30).status_code == 200
