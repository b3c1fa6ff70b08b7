"""The add-on's CURVE preferences (server key, client key pair) against a real backend bound with CURVE."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_addon_build import REPO, addon_zip, run_blender_script  # noqa: F401 - addon_zip is a fixture
from test_addon_generate import free_port


@pytest.fixture(scope="module")
def report(addon_zip, tmp_path_factory):  # noqa: F811
    from backend.server.security import make_keys

    tmp = tmp_path_factory.mktemp("curve")
    keys = make_keys(tmp / "keys")
    address = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--bind", address, "--results",
                               str(tmp / "results"), "--device", "cpu", "--curve-secret-key",
                               str(keys["server_secret"]), "--curve-client-keys", str(keys["authorized_clients"])],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield run_blender_script("addon_curve.py", addon_zip, address, keys["server_public"], keys["client_secret"],
                                 tmp_path=tmp)
    finally:
        server.kill()
        server.wait(10)


def test_authorised_client_connects_with_a_key_file_or_a_z85_key(report):
    for key in ("authorised_file", "authorised_z85"):
        assert report[key]["connection"] == "connected" and report[key]["device"] == "cpu", report[key]


def test_unauthorised_or_plain_client_reads_as_lost(report):
    for key in ("stranger", "plain"):
        assert report[key]["connection"] == "lost", report[key]
        assert report[key]["last_error"].startswith("Backend lost")


def test_public_only_client_file_is_refused_in_words(report):
    assert report["public_only"]["operator"] == ["CANCELLED"]
    assert "holds no secret key" in report["public_only"]["last_error"]
    assert report["timer_errors"] == []
