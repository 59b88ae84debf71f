"""Per-robot authentication: a server interceptor that refuses every call without valid robot credentials.

Robots send `x-sop-robot-id` and `authorization: Bearer <token>` on every call (`sop.credentials`). The
interceptor checks them against the token-hash file before any handler runs, so an unauthenticated peer
never reaches ingest or the checkpoint bytes. Handlers read the robot id with `authenticated_robot_id`,
which is only reachable after the interceptor accepted the call. gRPC health checking stays open so load
balancers and orchestrators can probe the learner without credentials.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc

from sop.credentials import ROBOT_ID_METADATA_KEY, TokenRegistry

logger = logging.getLogger(__name__)

# Services any peer may call without credentials.
OPEN_SERVICE_PREFIXES = ("/grpc.health.v1.Health/",)


def _metadata_dict(metadata: Any) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            result.setdefault(key, value)
    return result


def _refusal_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED without reading requests."""

    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class RobotAuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for a call whose robot id and token do not match the registry.

    With `registry=None` (auth.allow_unauthenticated) a call still has to name its robot, but the claim is
    believed; that mode exists for experiments on 127.0.0.1 only.
    """

    def __init__(self, registry: TokenRegistry | None) -> None:
        self.registry = registry
        self.refused = 0

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_SERVICE_PREFIXES):
            return handler
        metadata = _metadata_dict(handler_call_details.invocation_metadata)
        if self.registry is None:
            robot_id = metadata.get(ROBOT_ID_METADATA_KEY) or None
            reason = f"metadata {ROBOT_ID_METADATA_KEY!r} is missing"
        else:
            robot_id = self.registry.check_metadata(metadata)
            reason = "robot id or token is missing or wrong (check the robot's token file)"
        if robot_id is None:
            self.refused += 1
            logger.warning("refused %s: %s", method, reason)
            return _refusal_handler(handler, reason)
        return handler


def authenticated_robot_id(context: grpc.ServicerContext) -> str:
    """The robot id of a call the interceptor has accepted."""
    for key, value in context.invocation_metadata():
        if key == ROBOT_ID_METADATA_KEY and isinstance(value, str):
            return value
    # Unreachable behind RobotAuthInterceptor; abort rather than trust an anonymous call.
    context.abort(grpc.StatusCode.UNAUTHENTICATED, f"metadata {ROBOT_ID_METADATA_KEY!r} is missing")
    raise AssertionError("context.abort returned")
