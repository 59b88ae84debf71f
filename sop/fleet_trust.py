"""The fleet's trust material, and the one home of checkpoint signing and verification.

    sop fleet init --robots 4 --out fleet/ [--learner_hosts learner.lab.example,10.0.0.5]

creates, with the `cryptography` package (no openssl subprocesses), everything a learner and N robots need to
talk mutual TLS and to trust the learner's checkpoints:

    fleet/
      ca/                        stays with whoever runs the fleet (offline); needed only to issue more certs
        ca.pem                   the fleet CA's certificate (self-signed, EC P-256)
        ca.key                   its private key (0600)
      learner/                   copy to the learner machine
        server.pem, server.key   the learner's TLS certificate (SANs: every learner_hosts, localhost,
                                 127.0.0.1) and key (0600)       -> server.tls.cert_file / key_file
        client_ca.pem            the CA robots' client certificates must chain to -> server.tls.client_ca_file
        token_hashes.json        robot id -> sha256 of its token (no tokens) -> auth.token_hashes_file
        checkpoint_signing.key   Ed25519 private key signing every published checkpoint (0600)
                                                                  -> trainer.signing_key_file
      robots/<robot-id>/         copy to that robot only
        ca.pem                   the CA the learner's certificate chains to  -> learner.tls_ca_file
        client.pem, client.key   the robot's client certificate (CN = robot id) and key (0600)
                                                                  -> learner.tls_cert_file / tls_key_file
        token                    the robot's bearer token alone (0600) -> learner.token_file
        checkpoint_signing.pub   the learner's Ed25519 public key -> policy.checkpoint_public_key_file

A robot directory holds nothing another robot could use to impersonate the learner, and the learner directory
holds no robot secret (token hashes only), so a stolen robot or learner disk does not hand over the fleet.
Re-running refuses to overwrite any of these files unless `--force true` (a new CA locks out every robot that
still has the old one).

Checkpoint signatures. The learner signs, with Ed25519, a short statement naming the checkpoint's version,
parent version, blob sha256 and size (`checkpoint_statement`); the blob's sha256 covers the whole
safetensors file, manifest included, so the signature binds the manifest too. The signature travels in the
`signature` field of `PolicyAnnouncement` (protos/sop/v1/fleet.proto) rather than as a detached file served
beside the blob: the robot checks it before it downloads a byte, a restarted learner re-signs what it
announces with its current key (key rotation needs no rewrite of stored checkpoints), and there is one
message to trust instead of two to match. The robot then checks the blob against the signed sha256 as
before, so hash and blob no longer arrive unauthenticated over the same channel.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sop.config import parse_config
from sop.credentials import CredentialsError, TokenRegistry, check_robot_id, new_token
from sop.durable_files import write_atomically

# Domain separation: a signature made for a checkpoint can never be replayed as any other signed statement.
STATEMENT_PREFIX = b"sop.checkpoint.v1\n"
CA_VALID_DAYS = 3650
DEFAULT_VALID_DAYS = 825
ALWAYS_IN_SERVER_SANS = ("localhost", "127.0.0.1")


class TrustError(ValueError):
    """Trust material that cannot be created or used; the message names the file and what to do."""


class SignatureError(TrustError):
    """A checkpoint announcement whose signature is missing or does not verify."""


# Checkpoint signatures ---------------------------------------------------------------------------------------


def checkpoint_statement(version: int, parent_version: int, sha256: str, size_bytes: int) -> bytes:
    """The exact bytes the learner signs for one published checkpoint."""
    return STATEMENT_PREFIX + (
        f"version={int(version)}\nparent_version={int(parent_version)}\n"
        f"sha256={sha256.lower()}\nsize_bytes={int(size_bytes)}\n"
    ).encode("ascii")


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read {what} {path}: {exc.strerror}") from None


class CheckpointSigner:
    """The learner's Ed25519 checkpoint-signing key."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: str | Path) -> CheckpointSigner:
        try:
            key = serialization.load_pem_private_key(_read(path, "checkpoint-signing key"), password=None)
        except (ValueError, TypeError) as exc:
            raise TrustError(f"checkpoint-signing key {path} is not a PEM private key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise TrustError(
                f"checkpoint-signing key {path} is not an Ed25519 key; create one with `sop fleet init`"
            )
        return cls(key)

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, version: int, parent_version: int, sha256: str, size_bytes: int) -> bytes:
        return self._key.sign(checkpoint_statement(version, parent_version, sha256, size_bytes))


class CheckpointVerifier:
    """A robot's copy of the learner's public key: refuses unsigned and wrongly signed checkpoints."""

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: str | Path) -> CheckpointVerifier:
        try:
            key = serialization.load_pem_public_key(_read(path, "checkpoint public key"))
        except (ValueError, TypeError) as exc:
            raise TrustError(f"checkpoint public key {path} is not a PEM public key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise TrustError(f"checkpoint public key {path} is not an Ed25519 key")
        return cls(key)

    def verify(
        self, signature: bytes, version: int, parent_version: int, sha256: str, size_bytes: int
    ) -> None:
        """Return when `signature` is the learner's over this checkpoint; raise SignatureError otherwise."""
        if not signature:
            raise SignatureError(
                f"checkpoint v{version} is unsigned; the learner must set trainer.signing_key_file to the "
                "key whose public half this robot has (policy.checkpoint_public_key_file)"
            )
        try:
            self._key.verify(signature, checkpoint_statement(version, parent_version, sha256, size_bytes))
        except InvalidSignature:
            raise SignatureError(
                f"checkpoint v{version} (sha256 {sha256[:16]}…) is not signed by the learner key this robot "
                "trusts (policy.checkpoint_public_key_file)"
            ) from None


# Fleet init ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobotTrust:
    """The files one robot gets (its directory under robots/)."""

    directory: Path
    ca_cert: Path
    client_cert: Path
    client_key: Path
    token: Path
    checkpoint_public_key: Path


@dataclass(frozen=True)
class FleetTrust:
    """Where `create_fleet_trust` puts each file (see the module docstring for who gets which)."""

    root: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    token_hashes: Path
    signing_key: Path
    robots: dict[str, RobotTrust]

    @classmethod
    def layout(cls, root: str | Path, robot_ids: Iterable[str]) -> FleetTrust:
        base = Path(root)
        robots = {}
        for robot_id in robot_ids:
            directory = base / "robots" / robot_id
            robots[robot_id] = RobotTrust(
                directory=directory,
                ca_cert=directory / "ca.pem",
                client_cert=directory / "client.pem",
                client_key=directory / "client.key",
                token=directory / "token",
                checkpoint_public_key=directory / "checkpoint_signing.pub",
            )
        learner = base / "learner"
        return cls(
            root=base,
            ca_cert=base / "ca" / "ca.pem",
            ca_key=base / "ca" / "ca.key",
            server_cert=learner / "server.pem",
            server_key=learner / "server.key",
            client_ca=learner / "client_ca.pem",
            token_hashes=learner / "token_hashes.json",
            signing_key=learner / "checkpoint_signing.key",
            robots=robots,
        )

    def files(self) -> list[Path]:
        found = [
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.client_ca,
            self.token_hashes,
            self.signing_key,
        ]
        for robot in self.robots.values():
            found += [
                robot.ca_cert,
                robot.client_cert,
                robot.client_key,
                robot.token,
                robot.checkpoint_public_key,
            ]
        return found


def _check_robot_id(robot_id: str) -> None:
    """The learner's rule for robot ids, and never a path of its own (robots/<id>/ stays inside robots/)."""
    try:
        check_robot_id(robot_id)
    except CredentialsError as exc:
        raise TrustError(str(exc)) from None
    if robot_id in (".", ".."):
        raise TrustError(f"robot id {robot_id!r} cannot name a directory")


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/:@" for c in host):
        raise TrustError(f"learner host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Atomically, and private keys and tokens 0600 from the first byte (the temporary file is 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, durable=True, private=True)
    path.chmod(0o600 if private else 0o644)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SOP fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _issue(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    valid_days: int,
) -> x509.Certificate:
    ca_cert, ca_key = issuer
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _new_ca(valid_days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name("SOP fleet CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def create_fleet_trust(
    out: str | Path,
    robot_ids: Sequence[str],
    learner_hosts: Sequence[str] = (),
    *,
    force: bool = False,
    valid_days: int = DEFAULT_VALID_DAYS,
) -> FleetTrust:
    """Write a new CA, the learner's certificate, tokens and signing key, and each robot's files under `out`.

    Refuses (TrustError naming the first file) when any of these files exists, unless `force`.
    """
    if not robot_ids:
        raise TrustError("a fleet needs at least one robot")
    if len(set(robot_ids)) != len(robot_ids):
        raise TrustError("robot ids must be distinct")
    for robot_id in robot_ids:
        _check_robot_id(robot_id)
    if valid_days < 1:
        raise TrustError(f"certificates must be valid for at least one day, got {valid_days}")
    hosts = list(dict.fromkeys([*learner_hosts, *ALWAYS_IN_SERVER_SANS]))
    sans = [_san(host) for host in hosts]
    trust = FleetTrust.layout(out, robot_ids)
    existing = [path for path in trust.files() if path.exists()]
    if existing and not force:
        raise TrustError(
            f"{existing[0]} already exists ({len(existing)} fleet files in {trust.root}); a new CA would "
            "lock out robots that hold the old one. Pass --force true to replace them, or choose another --out"
        )

    ca_cert, ca_key = _new_ca(max(CA_VALID_DAYS, valid_days))
    ca_pem = _cert_pem(ca_cert)
    trust.ca_key.parent.mkdir(parents=True, exist_ok=True)
    trust.ca_key.parent.chmod(0o700)  # the CA key issues certificates the whole fleet trusts
    _write(trust.ca_key, _private_pem(ca_key), private=True)
    _write(trust.ca_cert, ca_pem, private=False)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        hosts[0],
        server_key.public_key(),
        (ca_cert, ca_key),
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
        valid_days,
    )
    _write(trust.server_key, _private_pem(server_key), private=True)
    _write(trust.server_cert, _cert_pem(server_cert), private=False)
    _write(trust.client_ca, ca_pem, private=False)

    signing_key = ed25519.Ed25519PrivateKey.generate()
    _write(trust.signing_key, _private_pem(signing_key), private=True)
    public_pem = CheckpointSigner(signing_key).public_key_pem()

    registry = TokenRegistry({})
    for robot_id, robot in trust.robots.items():
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = _issue(
            robot_id,
            client_key.public_key(),
            (ca_cert, ca_key),
            ExtendedKeyUsageOID.CLIENT_AUTH,
            [],
            valid_days,
        )
        token = new_token()
        registry.add(robot_id, token)
        _write(robot.client_key, _private_pem(client_key), private=True)
        _write(robot.client_cert, _cert_pem(client_cert), private=False)
        _write(robot.ca_cert, ca_pem, private=False)
        _write(robot.token, (token + "\n").encode(), private=True)
        _write(robot.checkpoint_public_key, public_pem, private=False)
    trust.token_hashes.parent.mkdir(parents=True, exist_ok=True)
    registry.write(trust.token_hashes)
    trust.token_hashes.chmod(0o644)
    return trust


def learner_flags(trust: FleetTrust) -> list[str]:
    """The `sop learner serve` flags that put the learner on this fleet's mutual TLS and signing key."""
    return [
        "--server.tls.cert_file",
        str(trust.server_cert),
        "--server.tls.key_file",
        str(trust.server_key),
        "--server.tls.client_ca_file",
        str(trust.client_ca),
        "--auth.token_hashes_file",
        str(trust.token_hashes),
        "--trainer.signing_key_file",
        str(trust.signing_key),
    ]


def robot_flags(trust: FleetTrust, robot_id: str) -> list[str]:
    """The `sop robot run` flags that give robot `robot_id` its certificate, token and the learner's key."""
    robot = trust.robots[robot_id]
    return [
        "--learner.tls_ca_file",
        str(robot.ca_cert),
        "--learner.tls_cert_file",
        str(robot.client_cert),
        "--learner.tls_key_file",
        str(robot.client_key),
        "--learner.token_file",
        str(robot.token),
        "--policy.checkpoint_public_key_file",
        str(robot.checkpoint_public_key),
    ]


@dataclass(frozen=True)
class FleetInitConfig:
    """`sop fleet init`: how many robots, where the files go, and the names robots reach the learner by."""

    robots: int = field(default=0, metadata={"help": "number of robots (ids <robot_prefix>0 .. N-1)"})
    out: str = field(default="", metadata={"help": "directory to create the files in"})
    learner_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "DNS names or IPs robots use to reach the learner (localhost and 127.0.0.1 always)"
        },
    )
    robot_prefix: str = field(default="robot-", metadata={"help": "robot ids are <prefix><index>"})
    valid_days: int = field(
        default=DEFAULT_VALID_DAYS, metadata={"help": "validity of learner and robot certs"}
    )
    force: bool = field(default=False, metadata={"help": "replace the files of an earlier fleet init"})

    def __post_init__(self) -> None:
        if self.robots < 1:
            raise ValueError(f"robots must be at least 1 (e.g. --robots 4), got {self.robots}")
        if not self.out:
            raise ValueError("out: name the directory to create the files in (e.g. --out fleet)")


def main(argv: list[str] | None = None) -> int:
    args = parse_config(FleetInitConfig, sys.argv[1:] if argv is None else argv)
    robot_ids = [f"{args.robot_prefix}{i}" for i in range(args.robots)]
    try:
        trust = create_fleet_trust(
            args.out, robot_ids, args.learner_hosts, force=args.force, valid_days=args.valid_days
        )
    except (TrustError, OSError) as exc:
        print(f"sop fleet init: {exc}", file=sys.stderr)
        return 2
    print(f"fleet trust material for {len(robot_ids)} robots in {trust.root}")
    print(f"  keep offline:           {trust.ca_key.parent}/")
    print(f"  copy to the learner:    {trust.server_cert.parent}/   learner flags:")
    print("      " + " ".join(learner_flags(trust)))
    first = robot_ids[0]
    print(f"  copy to each robot:     {trust.robots[first].directory.parent}/<robot-id>/   e.g. {first}:")
    print("      " + " ".join(robot_flags(trust, first)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
