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


def test_a_second_coordinator_in_the_same_folder_is_found_on_its_own_port(tmp_path):
    """The log is appended to: an earlier run's 'listening on' line must not be taken for this one's."""
    from fleet.local_coordinator import LocalCoordinator

    with LocalCoordinator(tmp_path):
        pass
    with LocalCoordinator(tmp_path, startup_timeout_s=60) as second:   # (the stale port: a timeout)
        assert requests.get(f"{second.base_url}/api/v1/health", timeout=30).status_code == 200
        assert second.log().count("listening on") == 1
    assert (tmp_path / "coordinator.log").read_text().count("listening on") == 2
