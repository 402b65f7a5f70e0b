"""The child-process coordinator the simulator and the demo start (fleet.local_coordinator)."""

from __future__ import annotations

import requests


def test_secrets_that_start_with_a_dash_reach_the_coordinator(tmp_path):
    """token_urlsafe gives a leading '-' one time in 32; argparse once read '--admin-token -x' as a
    missing value and the coordinator refused to start."""
    from fleet.local_coordinator import LocalCoordinator

    coordinator = LocalCoordinator(tmp_path)
    coordinator.admin_token = "-" + coordinator.admin_token
    coordinator.enrollment_key = "-" + coordinator.enrollment_key
    with coordinator:
        ok = requests.get(f"{coordinator.base_url}/api/v1/devices", timeout=30,
                          headers={"Authorization": f"Bearer {coordinator.admin_token}"})
        refused = requests.get(f"{coordinator.base_url}/api/v1/devices", timeout=30,
                               headers={"Authorization": f"Bearer {coordinator.admin_token[1:]}"})
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 401
