"""TLS on the learner: a robot that trusts the learner's certificate talks to it; a plaintext robot cannot."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from learner_fixtures import RunningLearner, auth

from cloud_learner.config import ServerConfig, TlsConfig
from sop.v1 import fleet_pb2, fleet_pb2_grpc

StartLearner = Callable[..., RunningLearner]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "learner.crt", directory / "learner.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_learner_serves_trusting_robots_only(start_learner: StartLearner, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    server = replace(
        ServerConfig(address="127.0.0.1:0"), tls=TlsConfig(cert_file=str(cert), key_file=str(key))
    )
    learner = start_learner(server=server)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(f"localhost:{learner.port}", credentials) as channel:
        response = fleet_pb2_grpc.FleetStub(channel).Register(
            fleet_pb2.RegisterRequest(robot_id="robot-1"), metadata=auth(), timeout=10
        )
        assert response.max_chunk_bytes == 1 << 20
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel, pytest.raises(grpc.RpcError) as error:
        fleet_pb2_grpc.FleetStub(channel).Register(
            fleet_pb2.RegisterRequest(robot_id="robot-1"), metadata=auth(), timeout=3
        )
    assert error.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_tls_config_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cert_file"):
        TlsConfig(cert_file=str(tmp_path / "missing.crt"), key_file=str(tmp_path / "missing.key"))
    with pytest.raises(ValueError, match="together"):
        TlsConfig(cert_file=str(tmp_path / "x.crt"))
