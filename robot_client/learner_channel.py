"""The robot's gRPC link to the learner: one channel, TLS (mutual, with the robot's client certificate) when
configured, credentials and a deadline on every call, and the back-off every reconnecting thread uses.

Peers' actors log a disconnect and let the stream thread die, or retry without deadlines and wedge the
learner. Here every call has a deadline (unary calls `rpc_timeout_s`, streams their own), the channel
reconnects quickly after the learner comes back (gRPC's default reconnect back-off grows to 2 minutes),
and each retrying loop waits with exponential back-off and jitter so a restarted learner is not hit by
the whole fleet at once.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from robot_client.config import LearnerLinkConfig
from sop.credentials import ROBOT_ID_METADATA_KEY, call_metadata, read_token_file
from sop.v1 import fleet_pb2_grpc, operator_pb2_grpc

# Checkpoint chunks are at most 1 MiB of data plus a few fields; leave room.
MAX_MESSAGE_BYTES = 4 << 20

Response = TypeVar("Response")


class Backoff:
    """Exponential back-off with jitter: the n-th wait is uniform in [d/2, d], d = initial * 2^n <= max.

    Half the delay is fixed so a retry never hammers at once; the other half is random so a fleet that
    lost its learner together does not reconnect together.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, floor_s: float = 0.0) -> float:
        ceiling = min(self.max_s, self.initial_s * (2.0**self.attempt))
        self.attempt += 1
        return max(floor_s, ceiling * (0.5 + 0.5 * self._rng.random()))

    def reset(self) -> None:
        self.attempt = 0


def rpc_code(error: BaseException) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN for anything that is not a gRPC error)."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code = error.code()
        if isinstance(code, grpc.StatusCode):
            return code
    return grpc.StatusCode.UNKNOWN


def rpc_details(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "details"):
        return str(error.details() or "")
    return str(error)


def channel_options(config: LearnerLinkConfig) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # Reconnect within a second or two of the learner coming back instead of gRPC's 2-minute ceiling.
        ("grpc.initial_reconnect_backoff_ms", int(config.reconnect_initial_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(config.reconnect_initial_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(config.reconnect_max_s * 1000)),
        # The daemon retries itself, with its own back-off and bookkeeping (QueryUpload before a resend).
        ("grpc.enable_retries", 0),
    ]
    if config.keepalive_time_s > 0:
        options += [
            ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return options


def _read_pem(config: LearnerLinkConfig, name: str) -> bytes | None:
    path = getattr(config, name)
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"learner.{name}: cannot read {path}: {exc.strerror}") from None


def open_channel(config: LearnerLinkConfig) -> grpc.Channel:
    """A channel to `config.address`: TLS with the configured CA (mutual TLS when the robot has a client
    certificate), else plaintext."""
    if config.address is None:
        raise ValueError("learner.address is not set; the robot runs offline")
    options = channel_options(config)
    root_certificates = _read_pem(config, "tls_ca_file")
    if root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates,
            private_key=_read_pem(config, "tls_key_file"),
            certificate_chain=_read_pem(config, "tls_cert_file"),
        )
        return grpc.secure_channel(config.address, credentials, options=options)
    return grpc.insecure_channel(config.address, options=options)


class LearnerChannel:
    """The channel, the two service stubs, this robot's call metadata, and the configured deadlines."""

    def __init__(self, config: LearnerLinkConfig, robot_id: str, token: str | None = None) -> None:
        self.config = config
        self.robot_id = robot_id
        if token is None and config.token_file is not None:
            token = read_token_file(config.token_file)
        # Without a token the robot still says who it is; a learner that checks tokens answers UNAUTHENTICATED.
        self.metadata: tuple[tuple[str, str], ...] = (
            call_metadata(robot_id, token) if token is not None else ((ROBOT_ID_METADATA_KEY, robot_id),)
        )
        self.channel = open_channel(config)
        self.fleet = fleet_pb2_grpc.FleetStub(self.channel)
        self.operator = operator_pb2_grpc.OperatorStub(self.channel)
        self._closed = threading.Event()

    def unary(
        self, method: Callable[..., Response], request: Any, timeout_s: float | None = None
    ) -> Response:
        """Call a unary method with this robot's credentials and a deadline."""
        return method(request, timeout=timeout_s or self.config.rpc_timeout_s, metadata=self.metadata)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Close the channel; every call in flight ends with CANCELLED."""
        self._closed.set()
        self.channel.close()
