"""Command-line options shared by every `sam3` command, each settable as a SAM3_* environment variable.

Containers configure the workers through the environment (deploy/); a flag given on the command line
wins over the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam3_core.openvino_session import ENCODER_RUNTIMES


def env_name(flag: str) -> str:
    """--redis-url -> SAM3_REDIS_URL."""
    return "SAM3_" + flag.lstrip("-").upper().replace("-", "_")


def option(
    parser: argparse._ActionsContainer,
    flag: str,
    *,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str,
    **kwargs: Any,
) -> None:
    """An option whose default comes from its SAM3_* environment variable, which --help names.

    An empty variable counts as unset: compose files and Kubernetes manifests produce them easily. The
    variable's text becomes the default and argparse converts it only when the command runs, checked
    like a typed flag (type and choices) and named in the error: one malformed variable never breaks
    --help or a command that does not use it.
    """
    variable = env_name(flag)
    shown = "" if default in (None, "") else f"; default {default}"
    environment = os.environ.get(variable)
    if environment:
        default, type = environment, _checked_environment(type, variable, environment, kwargs.get("choices"))
    parser.add_argument(flag, default=default, type=type, help=f"{help} [env {variable}{shown}]", **kwargs)


def _checked_environment(
    convert: Callable[[str], Any], variable: str, environment: str, choices: Any
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text != environment:
            return convert(text)  # typed on the command line: argparse names the flag
        try:
            value = convert(text)
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise argparse.ArgumentTypeError(f"{variable}={text!r} from the environment: {error}") from None
        if choices is not None and value not in choices:
            shown = ", ".join(map(str, choices))
            raise argparse.ArgumentTypeError(f"{variable}={text!r} from the environment: choose one of {shown}")
        return value

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    parse.__name__ = "whole number"
    return parse


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Where the model comes from and how ONNX Runtime runs it."""
    group = parser.add_argument_group("model")
    source = group.add_mutually_exclusive_group()
    option(source, "--model-dir", type=Path, help="local model folder in the onnx-community layout")
    option(
        source,
        "--model",
        help="Hugging Face repo id, downloaded once and cached (default onnx-community/sam3-tracker-ONNX)",
    )
    option(group, "--variant", help="encoder variant: fp32 (default), int8, q4, fp16, ...")
    option(
        group,
        "--threads",
        type=whole_number(0),
        default=0,
        help="ONNX Runtime intra-op threads per session (0 = all cores)",
    )
    group.add_argument(
        "--provider",
        action="append",
        default=None,
        metavar="NAME",
        help="execution provider, e.g. CUDAExecutionProvider (repeatable; default: best available)",
    )
    option(
        group,
        "--encoder-runtime",
        choices=ENCODER_RUNTIMES,
        default="onnxruntime",
        help="who runs the encoder: ONNX Runtime, or OpenVINO at f32 or bf16 (the fastest on CPUs with "
        "AVX-512 BF16 or AMX, refused on others; needs the openvino extra). bf16 embeddings get their own model "
        "id: give decoders the same flag",
    )


def model_source(args: argparse.Namespace) -> str | Path:
    """--model-dir or --model (default the published repo). A flag typed on the command line beats one
    that came from the environment, so `docker run IMAGE encoder --model X` is not overridden by the
    image's SAM3_MODEL_DIR."""
    from sam3_core.sources import DEFAULT_REPO

    candidates = [("--model-dir", args.model_dir), ("--model", args.model)]
    typed = [value for flag, value in candidates if value and os.environ.get(env_name(flag)) != str(value)]
    return next(iter(typed), None) or next((value for _, value in candidates if value), None) or DEFAULT_REPO


def load_model(
    args: argparse.Namespace, *, load_encoder: bool = True, load_decoder: bool = True, hint_server: bool = False
) -> Any:
    """The Sam3Model the model flags describe (--model-dir / --model, --variant, --threads, --provider).

    `hint_server`: a command that could use a service instead says so when the default model cannot be
    fetched (the usual cause: `make serve` runs and --server was forgotten).
    """
    from sam3_cli.errors import CliError
    from sam3_core.model import ModelNotFoundError, RuntimeOptions, Sam3Model
    from sam3_core.sources import resolve_model_dir

    try:
        folder = resolve_model_dir(model_source(args), variant=args.variant)
    except ModelNotFoundError as error:
        if hint_server and not (args.model_dir or args.model):
            raise CliError(
                f"{error} To segment through a running service instead (`make serve` listens on "
                "localhost:50051), pass --server HOST:PORT."
            ) from error
        raise
    runtime = RuntimeOptions(
        providers=tuple(args.provider) if args.provider else "auto",
        intra_op_threads=args.threads,
        encoder_runtime=args.encoder_runtime,
    )
    return Sam3Model(
        folder, variant=args.variant, runtime=runtime, load_encoder=load_encoder, load_decoder=load_decoder
    )


def check_target(flag: str, target: str) -> None:
    """The SDK's rule for targets (sam3_client.targets: HOST:PORT, always with a port), as a usage error."""
    from sam3_cli.errors import UsageError
    from sam3_client.targets import TargetError
    from sam3_client.targets import check_target as check

    try:
        check(target)
    except TargetError as error:
        tls = " with --tls" if error.tls else ""
        raise UsageError(f"{flag} {target} {error.problem}: give HOST:PORT, e.g. {flag} {error.example}{tls}") from None


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions to the terminal, keeps multi-line text (example epilogs) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_connection_options(group: argparse._ActionsContainer) -> None:
    """How a client command reaches the workers: bearer token and TLS."""
    option(group, "--token", help="bearer token the workers require (their --auth-token)")
    group.add_argument("--tls", action="store_true", help="connect with TLS (system trust store, or --tls-ca)")
    option(group, "--tls-ca", type=Path, metavar="PEM", help="CA bundle to trust for TLS (implies --tls)")
    add_client_certificate_options(group)


def add_client_certificate_options(group: argparse._ActionsContainer) -> None:
    """--tls-client-cert / --tls-client-key: what workers with --tls-client-ca (mTLS) require."""
    option(group, "--tls-client-cert", type=Path, metavar="PEM", help="client certificate for mTLS (implies --tls)")
    option(group, "--tls-client-key", type=Path, metavar="PEM", help="private key of --tls-client-cert")


def _read_pem(args: argparse.Namespace, name: str) -> bytes | None:
    """The bytes of the PEM file flag `name`, read with an error that names the flag."""
    path = getattr(args, name, None)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"--{name.replace('_', '-')} {path}: {error.strerror or error}") from error


def tls_options(args: argparse.Namespace) -> dict[str, Any]:
    """The TLS flags as keyword arguments of ChannelSettings and of the health checks."""
    root, certificate = _read_pem(args, "tls_ca"), _read_pem(args, "tls_client_cert")
    return {
        "tls": bool(args.tls or root or certificate),
        "root_certificates": root,
        "client_certificate": certificate,
        "client_key": _read_pem(args, "tls_client_key"),
    }


def channel_settings(args: argparse.Namespace, **overrides: Any) -> Any:
    """The SDK's ChannelSettings for the connection flags (plus any other ChannelSettings field)."""
    from sam3_client import ChannelSettings

    return ChannelSettings(token=args.token, **tls_options(args), **overrides)


def parse_numbers(text: str, count: int, flag: str) -> tuple[float, ...]:
    """'X,Y' or 'X1,Y1,X2,Y2' -> floats, with an error that names the flag."""
    from sam3_cli.errors import UsageError

    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count:
        shape = "X,Y" if count == 2 else "X1,Y1,X2,Y2"
        raise UsageError(f"{flag} {text!r}: expected {count} comma-separated numbers ({shape})")
    return values
