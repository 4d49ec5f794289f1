"""The host-state helpers of tests/support/realnode.py that `down` relies on (no cluster needed)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import realnode_host


def test_the_hosts_line_is_added_once_and_removed_exactly(tmp_path):
    hosts = tmp_path / "hosts"
    original = "127.0.0.1 localhost\n# a comment about real-0\n10.0.0.1 real-0-not-ours\n"
    hosts.write_text(original)
    realnode_host.set_hosts_entry(True, hosts)
    realnode_host.set_hosts_entry(True, hosts)
    lines = hosts.read_text().splitlines()
    assert lines.count(f"127.0.0.1 {realnode_host.NODE_NAME} {realnode_host.HOSTS_MARK}") == 1
    assert lines[:3] == original.splitlines()
    realnode_host.set_hosts_entry(False, hosts)
    assert hosts.read_text() == original


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_unmount_all_detaches_nested_mounts_deepest_first(tmp_path):
    outer, inner = tmp_path / "state" / "a", tmp_path / "state" / "a" / "b c"
    outer.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(outer)], check=True)
    try:
        inner.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
        # (a space in a mount point is escaped as \040 in mountinfo)
        assert realnode_host.mounts_under(tmp_path / "state") == [str(inner), str(outer)]
        assert realnode_host.unmount_all(tmp_path / "state") == []
        assert realnode_host.mounts_under(tmp_path / "state") == []
    finally:
        for path in (inner, outer):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
