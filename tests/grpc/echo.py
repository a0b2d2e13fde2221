#!/usr/bin/env python3
"""A real gRPC peer for the end-to-end tests (grpcio from PyPI; raw bytes, no protobuf).

    echo.py serve CERT KEY           # TLS gRPC server on 127.0.0.1; prints its port
    echo.py call TARGET CA NAME MSG [TOKEN]   # one unary call; prints the outcome as JSON

The service `portcullis.test.Echo/Say` answers `echo:<request>` and returns, in its
trailing metadata, the `x-user-id` it received (the identity the gateway injected); the
request `fail` is answered with NOT_FOUND (a trailers-only response).
"""
import json
import sys
from concurrent import futures

import grpc


def serve(cert, key):
    def say(request, context):
        seen = dict(context.invocation_metadata())
        context.set_trailing_metadata((("x-echo-user", seen.get("x-user-id", "")),))
        if request == b"fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "portcullis.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(target, ca, name, message, token=None):
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    channel = grpc.secure_channel(target, creds, options=(
        ("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)))
    say = channel.unary_unary("/portcullis.test.Echo/Say")
    metadata = [("x-user-id", "mallory")]
    if token:
        metadata.append(("authorization", "Bearer " + token))
    try:
        reply, outcome = say.with_call(message.encode(), metadata=metadata, timeout=10)
        out = {"code": outcome.code().name, "reply": reply.decode(),
               "trailing": dict(outcome.trailing_metadata() or ())}
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details(),
               "initial": dict(e.initial_metadata() or ()),
               "trailing": dict(e.trailing_metadata() or ())}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        call(*sys.argv[2:])
