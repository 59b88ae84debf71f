"""Per-robot authentication: a server interceptor that refuses every call without valid robot credentials.

Robots send `x-sop-robot-id` and `authorization: Bearer <token>` on every call (`sop.credentials`). The
interceptor checks them against the token-hash file before any handler runs, so an unauthenticated peer
never reaches ingest or the checkpoint bytes. Handlers read the robot id with `authenticated_robot_id`
and the token's role (`sop.credentials.Role`: robot, demonstrator, operator) with `authenticated_role`, both
only reachable after the interceptor accepted the call; `require_role` refuses a call whose role may not
do what it asks, with PERMISSION_DENIED naming the role. gRPC health checking stays open so load balancers
and orchestrators can probe the learner without credentials.

The role travels from the interceptor to the handler in a weak map keyed by the call's context: the
interceptor wraps the accepted handler so that the first thing it does is record the role for that context
(`grpc` has no supported way to attach data to a call), and nothing outlives the call.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import grpc

from sop.credentials import ROBOT_ID_METADATA_KEY, ROBOT_ID_PATTERN, Role, TokenRegistry
from sop.safe_logging import RateLimitedLog, client_str

logger = logging.getLogger(__name__)
throttled = RateLimitedLog(logger)
# Role of each call in progress, recorded by the wrapped handler (see the module docstring).
_ROLES: weakref.WeakKeyDictionary[grpc.ServicerContext, Role] = weakref.WeakKeyDictionary()

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


def certificate_mismatch(context: grpc.ServicerContext, robot_id: str) -> str | None:
    """Why the call's client certificate does not belong to `robot_id` (None: it does, or there is none).

    Under mutual TLS every robot presents a certificate whose common name is its robot id (`sop fleet init`
    issues them so); a robot that presents its own certificate with another robot's token is refused.
    """
    names = context.auth_context().get("x509_common_name") or []
    if not names:
        return None
    common_name = names[0].decode("utf-8", "replace") if isinstance(names[0], bytes) else str(names[0])
    if common_name == robot_id:
        return None
    return f"the client certificate is robot {client_str(common_name)}'s, the token robot {client_str(robot_id)}'s"


def _handler_with_role(handler: grpc.RpcMethodHandler, robot_id: str, role: Role) -> grpc.RpcMethodHandler:
    """`handler`, recording `role` for the call's context before it runs; under mutual TLS it first checks
    that the certificate and the token name the same robot."""

    def remembering(behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            mismatch = certificate_mismatch(context, robot_id)
            if mismatch is not None:
                throttled.warning("certificate-mismatch", "refused a call: %s", mismatch)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, mismatch)
            _ROLES[context] = role
            return behaviour(request, context)

        return run

    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        assert handler.stream_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            remembering(handler.stream_stream), deserializer, serializer
        )
    if handler.request_streaming:
        assert handler.stream_unary is not None
        return grpc.stream_unary_rpc_method_handler(
            remembering(handler.stream_unary), deserializer, serializer
        )
    if handler.response_streaming:
        assert handler.unary_stream is not None
        return grpc.unary_stream_rpc_method_handler(
            remembering(handler.unary_stream), deserializer, serializer
        )
    assert handler.unary_unary is not None
    return grpc.unary_unary_rpc_method_handler(remembering(handler.unary_unary), deserializer, serializer)


class RobotAuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for a call whose robot id and token do not match the registry.

    With `registry=None` (auth.allow_unauthenticated) a call still has to name its robot, but the claim is
    believed (with role robot); that mode exists for experiments on 127.0.0.1 only.
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
        role = Role.ROBOT
        if self.registry is None:
            claimed = metadata.get(ROBOT_ID_METADATA_KEY, "")
            robot_id = claimed if ROBOT_ID_PATTERN.fullmatch(claimed) else None
            reason = f"metadata {ROBOT_ID_METADATA_KEY!r} is missing or not 1-64 of [A-Za-z0-9_.-]"
        else:
            identity = self.registry.identify(metadata)
            robot_id = None if identity is None else identity.robot_id
            role = Role.ROBOT if identity is None else identity.role
            reason = "robot id or token is missing or wrong (check the robot's token file)"
        if robot_id is None:
            self.refused += 1
            throttled.warning(
                "unauthenticated",
                "refused %s from robot id %s: %s",
                client_str(method),
                client_str(metadata.get(ROBOT_ID_METADATA_KEY, "")),
                reason,
            )
            return _refusal_handler(handler, reason)
        return _handler_with_role(handler, robot_id, role)


def authenticated_robot_id(context: grpc.ServicerContext) -> str:
    """The robot id of a call the interceptor has accepted."""
    for key, value in context.invocation_metadata():
        if key == ROBOT_ID_METADATA_KEY and isinstance(value, str):
            return value
    # Unreachable behind RobotAuthInterceptor; abort rather than trust an anonymous call.
    context.abort(grpc.StatusCode.UNAUTHENTICATED, f"metadata {ROBOT_ID_METADATA_KEY!r} is missing")
    raise AssertionError("context.abort returned")


def authenticated_role(context: grpc.ServicerContext) -> Role:
    """The role of the token of a call the interceptor has accepted."""
    role = _ROLES.get(context)
    if role is None:
        # Unreachable behind RobotAuthInterceptor; abort rather than grant a role to an anonymous call.
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "the call carries no authenticated role")
        raise AssertionError("context.abort returned")
    return role


def require_role(context: grpc.ServicerContext, *allowed: Role) -> Role:
    """The call's role when it is one of `allowed`; otherwise abort with PERMISSION_DENIED naming it."""
    role = authenticated_role(context)
    if role not in allowed:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"a token of role {role.value!r} may not do this; it needs role "
            + " or ".join(repr(r.value) for r in allowed),
        )
    return role
