"""TLS on the learner: a robot that trusts the learner's certificate talks to it; a plaintext robot cannot.
With `server.tls.client_ca_file` (mutual TLS, what `sop fleet init` sets up) only robots presenting a
certificate of the fleet's CA are served; plaintext on a non-loopback address is refused at config load."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from learner_fixtures import RunningLearner, auth

from cloud_learner.config import AuthConfig, LearnerConfig, ServerConfig, TlsConfig
from robot_client.config import LearnerLinkConfig
from robot_client.learner_channel import LearnerChannel
from sop.config import ConfigError, parse_config
from sop.fleet_trust import FleetTrust, create_fleet_trust
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


def mutual_tls_server(trust: FleetTrust) -> ServerConfig:
    tls = TlsConfig(
        cert_file=str(trust.server_cert), key_file=str(trust.server_key), client_ca_file=str(trust.client_ca)
    )
    return replace(ServerConfig(address="127.0.0.1:0"), tls=tls)


def register(link: LearnerLinkConfig, robot_id: str, token_file: Path) -> fleet_pb2.RegisterResponse:
    """Register the way the robot daemon does: through its own channel and credentials."""
    channel = LearnerChannel(replace(link, token_file=str(token_file), rpc_timeout_s=5.0), robot_id)
    try:
        return channel.unary(channel.fleet.Register, fleet_pb2.RegisterRequest(robot_id=robot_id))
    finally:
        channel.close()


def test_mutual_tls_serves_only_robots_with_a_fleet_certificate(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    fleet = create_fleet_trust(tmp_path / "fleet", ["robot-1"])
    foreign = create_fleet_trust(tmp_path / "foreign", ["robot-1"])
    learner = start_learner(
        server=mutual_tls_server(fleet), auth=AuthConfig(token_hashes_file=str(fleet.token_hashes))
    )
    robot, stranger = fleet.robots["robot-1"], foreign.robots["robot-1"]
    token = robot.token
    for host in ("127.0.0.1", "localhost"):  # both are in the learner certificate's SANs
        link = LearnerLinkConfig(
            address=f"{host}:{learner.port}",
            tls_ca_file=str(robot.ca_cert),
            tls_cert_file=str(robot.client_cert),
            tls_key_file=str(robot.client_key),
        )
        assert register(link, "robot-1", token).max_chunk_bytes == 1 << 20

    # Trusts the learner but has no client certificate; or one from another CA: the handshake fails.
    no_cert = LearnerLinkConfig(address=f"127.0.0.1:{learner.port}", tls_ca_file=str(robot.ca_cert))
    foreign_cert = replace(
        no_cert, tls_cert_file=str(stranger.client_cert), tls_key_file=str(stranger.client_key)
    )
    for link in (no_cert, foreign_cert):
        with pytest.raises(grpc.RpcError) as error:
            register(link, "robot-1", token)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE, link
    # A learner certificate from another CA is not trusted by the robot either.
    wrong_ca = replace(
        no_cert,
        tls_ca_file=str(stranger.ca_cert),
        tls_cert_file=str(robot.client_cert),
        tls_key_file=str(robot.client_key),
    )
    with pytest.raises(grpc.RpcError) as error:
        register(wrong_ca, "robot-1", token)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_robot_cannot_use_its_certificate_with_another_robots_token(
    start_learner: StartLearner, tmp_path: Path
) -> None:
    fleet = create_fleet_trust(tmp_path / "fleet", ["robot-1", "robot-2"])
    learner = start_learner(
        server=mutual_tls_server(fleet), auth=AuthConfig(token_hashes_file=str(fleet.token_hashes))
    )
    robot_2 = fleet.robots["robot-2"]
    link = LearnerLinkConfig(
        address=f"127.0.0.1:{learner.port}",
        tls_ca_file=str(robot_2.ca_cert),
        tls_cert_file=str(robot_2.client_cert),
        tls_key_file=str(robot_2.client_key),
    )
    assert register(link, "robot-2", robot_2.token).session_id
    with pytest.raises(grpc.RpcError) as error:
        register(link, "robot-1", fleet.robots["robot-1"].token)  # robot-1's stolen token
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client certificate" in (error.value.details() or "")


def test_robot_client_certificate_needs_its_key_and_a_ca(tmp_path: Path) -> None:
    robot = create_fleet_trust(tmp_path / "fleet", ["robot-1"]).robots["robot-1"]
    with pytest.raises(ValueError, match="together"):
        LearnerLinkConfig(
            address="127.0.0.1:1", tls_ca_file=str(robot.ca_cert), tls_cert_file=str(robot.client_cert)
        )
    with pytest.raises(ValueError, match="tls_ca_file"):
        LearnerLinkConfig(
            address="127.0.0.1:1", tls_cert_file=str(robot.client_cert), tls_key_file=str(robot.client_key)
        )


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "10.0.0.5", "learner.lab.example"])
def test_plaintext_on_a_reachable_address_is_refused_at_config_load(host: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"server\.tls.*server\.insecure=true"):
        ServerConfig(address=f"{host}:50051")
    # An explicit opt-in, or TLS, serves it.
    assert ServerConfig(address=f"{host}:50051", insecure=True).insecure
    fleet = create_fleet_trust(tmp_path / "fleet", ["robot-1"])
    assert replace(mutual_tls_server(fleet), address=f"{host}:50051").tls.enabled


def test_learner_config_load_names_the_fix_for_plaintext_on_all_interfaces() -> None:
    flags = ["--server.address", "0.0.0.0:50051", "--auth.allow_unauthenticated", "true"]
    with pytest.raises(ConfigError, match=r"server\.insecure=true"):
        parse_config(LearnerConfig, flags)
    assert parse_config(LearnerConfig, [*flags, "--server.insecure", "true"]).server.insecure


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "[::1]", "localhost"])
def test_plaintext_on_loopback_needs_no_opt_in(host: str) -> None:
    assert not ServerConfig(address=f"{host}:50051").tls.enabled
