"""fleet/shared_downloads.py on its own: linking, keeping, and refusing a name that is not a digest."""

from __future__ import annotations

import hashlib

import pytest

from fleet.shared_downloads import SharedDownloads


def test_a_kept_file_is_linked_into_other_devices_and_an_unknown_one_is_not(tmp_path):
    shared = SharedDownloads(tmp_path / "shared")
    payload = b"program bytes" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    first = tmp_path / "device-1" / "artifacts" / "model.pte"
    assert shared.link_into(digest, first) is None          # nothing kept yet: the device downloads
    first.parent.mkdir(parents=True)
    first.write_bytes(payload)
    shared.keep(digest, first)
    shared.keep(digest, first)                                # a second keep changes nothing
    second = tmp_path / "device-2" / "artifacts" / "model.pte"
    assert shared.link_into(digest, second) == len(payload)
    assert second.read_bytes() == payload
    assert second.stat().st_ino == first.stat().st_ino        # a link, no bytes copied
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [digest]


def test_a_name_that_is_not_a_sha256_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        SharedDownloads(tmp_path).link_into("../../etc/passwd", tmp_path / "x")
