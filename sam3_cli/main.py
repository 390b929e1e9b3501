"""The `sam3` command: one entry point for trying, serving, pre-warming and managing SAM3 models.

Each subcommand is a small function; the heavy imports (onnxruntime, torch, huggingface_hub) happen
inside them, so `sam3 --help` and `sam3 health` are instant. Errors are one readable line (what
happened, what to do) and exit code 1; `--debug` adds the traceback. Usage errors exit with 2.
Longer commands live in their own modules beside this one.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from sam3_cli import encode, health, models, segment, track
from sam3_cli.errors import CliError, UsageError, explain
from sam3_cli.options import HelpFormatter
from sam3_cli.parsing import Parser

__all__ = ["CliError", "build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXAMPLES = """\
examples:
  sam3 segment -i photo.jpg --point 500,375 --model-dir models/sam3        # in-process, no server
  sam3 serve --model-dir models/sam3 --port 50051                          # encoder + decoder + Redis
  sam3 segment -i photo.jpg --point 500,375 --server localhost:50051 --overlay preview.png
  sam3 encode photos/ --server localhost:50051                             # pre-warm a folder
  sam3 track clip.mp4 --point 1:0:320,240 --overlay seen.mp4 --model-dir models/sam3   # follow object 1
  sam3 models pull --variant int8 --dir models/sam3-int8                   # download (needs network)
  sam3 models export --random-init --config tiny --out models/tiny         # build one offline
  sam3 health --target localhost:50051                                     # exit 0 when SERVING

Every option that configures a worker can also be set as a SAM3_* environment variable (see each
command's --help). Add --debug to any command to see the traceback of an error.
"""


# ---------------------------------------------------------------- workers


def _add_workers(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from sam3_cli.workers import DECODER, ENCODER, add_worker_options, main_for

    workers = {
        "serve": ({ENCODER, DECODER}, True, "both services on one port; embedded Redis unless --redis-url"),
        "encoder": ({ENCODER}, False, "the encoder worker: images -> embeddings in Redis"),
        "decoder": ({DECODER}, False, "the decoder worker: prompts -> masks, from embeddings in Redis"),
    }
    for name, (roles, embedded, text) in workers.items():
        parser = commands.add_parser(name, parents=parents, help=text, description=text[0].upper() + text[1:] + ".")
        add_worker_options(parser, roles, embedded_redis=embedded)
        parser.set_defaults(handler=main_for(roles, embedded_redis=embedded))


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sam3",
        description="Interactive image segmentation with Segment Anything 3 (SAM3) on ONNX Runtime: segment "
        "in this process, or run the encoder/decoder services and talk to them.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # Also accepted after the command (`sam3 segment ... --debug`); SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parents = [common]
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    segment.add_parser(commands, parents)
    encode.add_parser(commands, parents)
    track.add_parser(commands, parents)
    _add_workers(commands, parents)
    models.add_parser(commands, parents)
    health.add_parser(commands, parents)
    export = commands.add_parser(
        "export",
        parents=parents,
        help="same as `sam3 models export`",
        description=models.EXPORT_DESCRIPTION,
    )
    models.add_export_arguments(export)
    bench = commands.add_parser(
        "bench",
        parents=parents,
        help="benchmark transformers, raw ONNX Runtime, the predictor and the services side by side",
        description="Measure, in one run on this machine: transformers eager, the raw ONNX Runtime sessions, "
        "the in-process predictor and the gRPC services through the SDK; encoder variants, prompt latency, "
        "local-cache and Redis-fetch paths, and a concurrency sweep. Writes report.json, report.md and "
        "report.png (with the bench extra). Without --model-dir it uses (or exports) models/full.",
        formatter_class=HelpFormatter,
    )
    bench.set_defaults(handler=_run_bench)
    from sam3_bench.run import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    from sam3_bench.run import run

    return run(args)


def describe(error: BaseException) -> str:
    """One line for the user; unexpected exceptions say they are unexpected."""
    from sam3_client import Sam3Error

    if isinstance(error, Sam3Error):
        return explain(error, error.target or "the server")
    if isinstance(error, CliError | ValueError | OSError):
        return str(error) or type(error).__name__
    return f"unexpected {type(error).__name__}: {error} (run with --debug for the traceback, and please report it)"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code (0 ok, 1 failed, 2 usage error)."""
    try:
        args = build_parser().parse_args(segment.join_negative_coordinates(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help exits 0, usage errors 2: returned rather than raised, for callers
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE if exit_.code else EXIT_OK
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("sam3: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        print(f"sam3: error: {describe(error)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, UsageError) else EXIT_FAILURE
