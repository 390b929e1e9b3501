"""`sam3 health`: one grpc.health.v1 Check, for container healthchecks and scripts.

Imports only grpc (no model, no torch, no ONNX Runtime), so it answers in a fraction of a second.
Exit code 0 when the service is SERVING, 1 otherwise (NOT_SERVING, unknown service, unreachable).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sam3_cli.errors import CliError, unreachable


def add_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from sam3_cli.options import HelpFormatter, add_client_certificate_options, option, positive_seconds

    parser = commands.add_parser(
        "health",
        parents=parents,
        help="ask a worker whether it is serving (exit 0 if SERVING, else 1)",
        description="Call grpc.health.v1.Health/Check on a worker and print its status. Exit code 0 when "
        "SERVING, 1 otherwise: usable as a container HEALTHCHECK. Services: '' (the whole worker, the "
        "default), sam3.v1.EncoderService, sam3.v1.DecoderService, liveness.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  sam3 health --target localhost:50051\n"
        "  sam3 health --target decoder:50051 --service sam3.v1.DecoderService --timeout 2",
    )
    default_target = f"127.0.0.1:{os.environ.get('SAM3_PORT', '50051')}"
    option(parser, "--target", default=default_target, metavar="HOST:PORT", help="worker to ask")
    parser.add_argument("--service", default="", metavar="NAME", help="service name to ask about (default: '')")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=3.0, help="seconds to wait for the answer (default 3)"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system trust store, or --tls-ca)")
    option(parser, "--tls-ca", type=Path, metavar="PEM", help="CA bundle to trust for TLS (implies --tls)")
    add_client_certificate_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from sam3_cli.options import check_target, tls_options
    from sam3_serving.health_check import check

    check_target("--target", args.target)
    shown = args.service or "(server)"
    try:
        status = check(args.target, args.service, timeout=args.timeout, **tls_options(args))
    except grpc.RpcError as error:
        code = error.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise CliError(_unknown_service(args)) from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CliError(unreachable(args.target, error.details() or "")) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CliError(f"{args.target} did not answer within {args.timeout:g} s (raise --timeout)") from None
        raise CliError(f"{args.target}: {code.name}: {error.details()}") from None
    print(f"{args.target} {shown}: {status}")
    return 0 if status == "SERVING" else 1


def _unknown_service(args: argparse.Namespace) -> str:
    """The names this worker does report (an encoder has no DecoderService), asked of the worker itself."""
    import grpc

    from sam3_cli.options import tls_options
    from sam3_serving.health_check import services
    from sam3_serving.health_service import LIVENESS

    try:
        names = services(args.target, timeout=args.timeout, **tls_options(args))
    except grpc.RpcError:  # a server without Health/List: the names a sam3 worker may have
        names = ["", "sam3.v1.EncoderService", "sam3.v1.DecoderService", LIVENESS]
    shown = ", ".join("'' (the whole worker)" if name == "" else name for name in names)
    return f"{args.target} does not report health for {args.service!r}; it knows: {shown}"
