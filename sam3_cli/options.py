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

    An empty variable counts as unset: compose files and Kubernetes manifests produce them easily.
    """
    variable = env_name(flag)
    if os.environ.get(variable):
        default = type(os.environ[variable])
    shown = "" if default in (None, "") else f"; default {default}"
    parser.add_argument(flag, default=default, type=type, help=f"{help} [env {variable}{shown}]", **kwargs)


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
    option(group, "--threads", type=int, default=0, help="ONNX Runtime intra-op threads per session (0 = all cores)")
    group.add_argument(
        "--provider",
        action="append",
        default=None,
        metavar="NAME",
        help="execution provider, e.g. CUDAExecutionProvider (repeatable; default: best available)",
    )


def model_source(args: argparse.Namespace) -> str | Path:
    """--model-dir or --model (default the published repo). A flag typed on the command line beats one
    that came from the environment, so `docker run IMAGE encoder --model X` is not overridden by the
    image's SAM3_MODEL_DIR."""
    from sam3_core.sources import DEFAULT_REPO

    candidates = [("--model-dir", args.model_dir), ("--model", args.model)]
    typed = [value for flag, value in candidates if value and os.environ.get(env_name(flag)) != str(value)]
    return next(iter(typed), None) or next((value for _, value in candidates if value), None) or DEFAULT_REPO


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
