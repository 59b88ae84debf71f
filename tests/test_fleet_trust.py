"""`sop fleet init`: a CA, the learner's certificate, per-robot certificates, tokens and the learner's hash
file, an Ed25519 checkpoint-signing key pair; and the checkpoint signature check robots run."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sop.cli import main as sop_main
from sop.credentials import TokenRegistry, read_token_file
from sop.fleet_trust import (
    CheckpointSigner,
    CheckpointVerifier,
    FleetTrust,
    SignatureError,
    TrustError,
    create_fleet_trust,
)

SHA = "ab" * 32


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def assert_issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """The certificate's signature verifies with the CA's key, and the names chain."""
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fleet_init_writes_a_chaining_pki_tokens_and_signing_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet"
    assert (
        sop_main(["fleet", "init", "--robots", "3", "--out", str(out), "--learner_hosts", "learner.lab"]) == 0
    )
    assert "copy to the learner" in capsys.readouterr().out
    trust = FleetTrust.layout(out, [f"robot-{i}" for i in range(3)])

    ca = load_cert(trust.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.verify_directly_issued_by(ca)  # self-signed
    assert trust.client_ca.read_bytes() == trust.ca_cert.read_bytes()

    server = load_cert(trust.server_cert)
    assert_issued_by(server, ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"learner.lab", "localhost"}
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    server_key = x509.load_pem_x509_certificate(trust.server_cert.read_bytes()).public_key()
    assert isinstance(server_key, ec.EllipticCurvePublicKey)

    registry = TokenRegistry.from_file(trust.token_hashes)
    public_keys = set()
    for robot_id, robot in trust.robots.items():
        client = load_cert(robot.client_cert)
        assert_issued_by(client, ca)
        assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == robot_id
        usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert robot.ca_cert.read_bytes() == trust.ca_cert.read_bytes()
        token = read_token_file(robot.token)
        assert registry.check(robot_id, token)
        assert not registry.check("robot-0" if robot_id != "robot-0" else "robot-1", token)
        public_keys.add(robot.checkpoint_public_key.read_bytes())
        for secret in (robot.client_key, robot.token):
            assert mode(secret) == 0o600, secret
        assert mode(robot.client_cert) == 0o644
    assert token not in trust.token_hashes.read_text(), "the learner's file must hold hashes only"

    for secret in (trust.ca_key, trust.server_key, trust.signing_key):
        assert mode(secret) == 0o600, secret
    assert mode(trust.ca_key.parent) == 0o700
    # Every robot holds the public half of the learner's signing key.
    signer = CheckpointSigner.from_file(trust.signing_key)
    assert public_keys == {signer.public_key_pem()}


def test_fleet_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fleet"
    first = create_fleet_trust(out, ["robot-0"])
    ca_before = first.ca_cert.read_bytes()
    token_before = first.robots["robot-0"].token.read_bytes()

    with pytest.raises(TrustError, match="--force"):
        create_fleet_trust(out, ["robot-0"])
    assert sop_main(["fleet", "init", "--robots", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert first.ca_cert.read_bytes() == ca_before
    assert first.robots["robot-0"].token.read_bytes() == token_before

    again = create_fleet_trust(out, ["robot-0"], force=True)
    assert again.ca_cert.read_bytes() != ca_before
    assert again.robots["robot-0"].token.read_bytes() != token_before
    assert mode(again.ca_key) == 0o600


def test_fleet_init_refuses_bad_names(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="robot id"):
        create_fleet_trust(tmp_path / "a", ["../escape"])
    with pytest.raises(TrustError, match="learner host"):
        create_fleet_trust(tmp_path / "b", ["robot-0"], ["bad host"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_checkpoint_signatures_bind_version_parent_hash_and_size(tmp_path: Path) -> None:
    trust = create_fleet_trust(tmp_path / "fleet", ["robot-0"])
    other = create_fleet_trust(tmp_path / "other", ["robot-0"])
    signer = CheckpointSigner.from_file(trust.signing_key)
    verifier = CheckpointVerifier.from_file(trust.robots["robot-0"].checkpoint_public_key)
    signature = signer.sign(7, 6, SHA, 1234)

    verifier.verify(signature, 7, 6, SHA, 1234)
    for version, parent, digest, size in (
        (8, 6, SHA, 1234),
        (7, 5, SHA, 1234),
        (7, 6, "cd" * 32, 1234),
        (7, 6, SHA, 1235),
    ):
        with pytest.raises(SignatureError, match="not signed"):
            verifier.verify(signature, version, parent, digest, size)
    with pytest.raises(SignatureError, match="unsigned"):
        verifier.verify(b"", 7, 6, SHA, 1234)
    foreign = CheckpointSigner.from_file(other.signing_key).sign(7, 6, SHA, 1234)
    with pytest.raises(SignatureError, match="not signed"):
        verifier.verify(foreign, 7, 6, SHA, 1234)
    # Keys of the wrong kind are named as such.
    with pytest.raises(TrustError, match="Ed25519"):
        CheckpointSigner.from_file(trust.server_key)
    with pytest.raises(TrustError, match="cannot read"):
        CheckpointVerifier.from_file(tmp_path / "missing.pub")
