"""`sam3-label-studio`: serve the ML backend, or pre-encode a whole project's images.

Every option is also an environment variable (named in --help), so a container sets them there:
the sam3 connection uses the same names as the `sam3` command (SAM3_SERVER, SAM3_TOKEN, ...), the
Label Studio side the names Label Studio's own ML backends use (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam3_client import ChannelSettings, Client
from sam3_label_studio.backend import Backend, BackendOptions
from sam3_label_studio.errors import BackendError
from sam3_label_studio.images import LabelStudio
from sam3_label_studio.labeling import LabelingConfig

__all__ = ["main"]

log = logging.getLogger("sam3_label_studio")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with _client(args) as client:
            return int(args.run(args, client))
    except (BackendError, ValueError, OSError) as error:
        print(f"sam3-label-studio: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace, client: Client) -> int:
    from sam3_label_studio.server import create_server

    backend = Backend(client, _options(args))
    basic_auth = tuple(args.basic_auth.split(":", 1)) if args.basic_auth else None
    if basic_auth is not None and len(basic_auth) != 2:
        raise ValueError("--basic-auth is USER:PASSWORD")
    server = create_server(backend, args.host, args.port, threads=args.threads, basic_auth=basic_auth)
    print(f"sam3 ML backend for Label Studio on http://{args.host}:{server.effective_port} -> sam3 at {_target(args)}")
    sys.stdout.flush()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


def _pre_encode(args: argparse.Namespace, client: Client) -> int:
    """Encode every image of a project now, one after another, saying how far it got."""
    label_studio = _label_studio(args)
    if not label_studio.url or not label_studio.api_key:
        raise ValueError(
            "pre-encode reads the project from Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"
        )
    config = LabelingConfig.parse(label_studio.get_json(f"/api/projects/{args.project}")["label_config"])
    backend = Backend(client, _options(args))
    tasks = _project_tasks(label_studio, args.project, config)
    counts = {"encoded": 0, "cached": 0, "failed": 0}
    for number, (reference, task_id) in enumerate(tasks, 1):
        try:
            counts["encoded" if backend.pre_encode(reference, task_id, label_studio) else "cached"] += 1
        except BackendError as error:
            counts["failed"] += 1
            print(f"task {task_id}: {error.message}", file=sys.stderr)
        print(f"\r{number}/{len(tasks)} images: " + ", ".join(f"{v} {k}" for k, v in counts.items()), end="")
    print()
    return 1 if counts["failed"] else 0


def _project_tasks(label_studio: LabelStudio, project: int, config: LabelingConfig) -> list[tuple[str, int]]:
    """(image reference, task id) of every task of the project with an image, in Label Studio's order."""
    found: list[tuple[str, int]] = []
    page = 1
    while True:
        answer = label_studio.get_json(f"/api/tasks?project={project}&page={page}&page_size=100&fields=all")
        tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
        found += [
            (t["data"][config.data_key], t["id"])
            for t in tasks
            if isinstance(t.get("data", {}).get(config.data_key), str)
        ]
        total = answer.get("total", 0) if isinstance(answer, dict) else 0
        if not tasks or page * 100 >= total:
            return found
        page += 1


def _options(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(
        target=_target(args),
        label_studio=_label_studio(args),
        negative_labels=tuple(label.strip() for label in args.negative_labels.split(",") if label.strip()),
        threshold=args.threshold,
        polygon_tolerance=args.polygon_tolerance,
    )


def _label_studio(args: argparse.Namespace) -> LabelStudio:
    return LabelStudio(args.label_studio_url or None, args.api_key or None)


def _target(args: argparse.Namespace) -> str:
    return args.server or f"{args.encoder_server} (encoder), {args.decoder_server} (decoder)"


def _client(args: argparse.Namespace) -> Client:
    if not args.server and not (args.encoder_server and args.decoder_server):
        raise ValueError("give --server HOST:PORT (SAM3_SERVER), or both --encoder-server and --decoder-server")
    pem = {name: Path(getattr(args, name)).read_bytes() if getattr(args, name) else None for name in _PEM_FILES}
    settings = ChannelSettings(
        token=args.token or None,
        tls=bool(args.tls or any(pem.values())),
        root_certificates=pem["tls_ca"],
        client_certificate=pem["tls_client_cert"],
        client_key=pem["tls_client_key"],
    )
    return Client(
        args.server, encoder_target=args.encoder_server, decoder_target=args.decoder_server, settings=settings
    )


_PEM_FILES = ("tls_ca", "tls_client_cert", "tls_client_key")


def _option(parser: argparse.ArgumentParser, flag: str, environment: str, help: str, **kwargs: Any) -> None:
    """A flag whose default is its environment variable (an empty one counts as unset)."""
    fallback = kwargs.pop("default", None)
    default = os.environ.get(environment) or fallback
    parser.add_argument(flag, default=default, help=f"{help} [env {environment}]", **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3-label-studio", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the ML backend Label Studio connects to")
    serve.set_defaults(run=_serve)
    _option(serve, "--host", "SAM3_LS_HOST", "address to listen on (0.0.0.0: every interface)", default="127.0.0.1")
    _option(serve, "--port", "SAM3_LS_PORT", "port to listen on", default=9090, type=int)
    _option(serve, "--threads", "SAM3_LS_THREADS", "requests answered at once", default=8, type=int)
    _option(
        serve,
        "--basic-auth",
        "SAM3_LS_BASIC_AUTH",
        "USER:PASSWORD every call must carry (Label Studio's model settings have fields for it)",
    )
    encode = commands.add_parser("pre-encode", help="encode every image of a Label Studio project now")
    encode.set_defaults(run=_pre_encode)
    encode.add_argument("--project", type=int, required=True, help="the project's id (its URL: /projects/ID)")
    for command in (serve, encode):
        _option(command, "--server", "SAM3_SERVER", "HOST:PORT of `sam3 serve` (or anything serving both services)")
        _option(command, "--encoder-server", "SAM3_ENCODER_SERVER", "encoder service of a split deployment")
        _option(command, "--decoder-server", "SAM3_DECODER_SERVER", "decoder service of a split deployment")
        _option(command, "--token", "SAM3_TOKEN", "bearer token the sam3 workers require (their --auth-token)")
        _option(command, "--tls", "SAM3_TLS", "connect to sam3 with TLS", action="store_const", const="1")
        _option(command, "--tls-ca", "SAM3_TLS_CA", "PEM CA bundle to trust for TLS (implies --tls)")
        _option(command, "--tls-client-cert", "SAM3_TLS_CLIENT_CERT", "PEM client certificate for mTLS")
        _option(command, "--tls-client-key", "SAM3_TLS_CLIENT_KEY", "PEM private key of --tls-client-cert")
        _option(
            command,
            "--label-studio-url",
            "LABEL_STUDIO_URL",
            "Label Studio's address, e.g. http://localhost:8080 (default: what Label Studio says when it connects)",
        )
        _option(
            command,
            "--api-key",
            "LABEL_STUDIO_API_KEY",
            "a Label Studio access token (personal or legacy) to "
            "read task images with (default: the project owner's legacy token, if enabled)",
        )
        _option(
            command,
            "--negative-labels",
            "SAM3_LS_NEGATIVE_LABELS",
            "keypoint labels that mean background",
            default="Negative,Background",
        )
        _option(
            command,
            "--threshold",
            "SAM3_LS_THRESHOLD",
            "concept instances scoring below are dropped",
            default=0.5,
            type=float,
        )
        _option(
            command,
            "--polygon-tolerance",
            "SAM3_LS_POLYGON_TOLERANCE",
            "pixels a <PolygonLabels> outline may stray from the mask's edge (0: every pixel corner)",
            default=1.0,
            type=float,
        )
        _option(command, "--log-level", "SAM3_LS_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", default="INFO")
    return parser
