"""`sam3 encode PATH...`: pre-warm a service's embedding store with many images.

Each image is sent to the encoder once; images it already holds answer at once and count as cached
(`--force` encodes them again). A file that fails (not an image, too large, unreadable) is counted
and reported with its reason, and the run goes on; a server that cannot be reached stops the run,
since every other file would fail the same way. Ctrl-C stops it too, cancelling the calls in flight
rather than waiting for them. Either way --json still lists every image, those not finished with
status "unfinished". Exit code 1 when anything failed, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grpc import StatusCode

from sam3_cli.errors import START_HINT, CliError, UsageError, explain

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Service-wide failures: every remaining file would fail the same way, so the run stops.
_FATAL_CODES = frozenset(
    {StatusCode.UNAVAILABLE, StatusCode.UNAUTHENTICATED, StatusCode.PERMISSION_DENIED, StatusCode.UNIMPLEMENTED}
)


@dataclass
class Outcome:
    path: str
    status: str  # "encoded", "cached", "failed", or "unfinished" (the run stopped first; `error` says why)
    image_id: str | None = None
    width: int | None = None
    height: int | None = None
    milliseconds: float | None = None
    error: str | None = None


class Fatal(Exception):
    def __init__(self, outcome: Outcome, error: Any) -> None:
        super().__init__(error)
        self.outcome, self.error = outcome, error


def find_images(paths: Sequence[Path]) -> tuple[list[Path], list[Outcome]]:
    """Files as given (any extension), folders searched recursively for image extensions; missing paths fail."""
    found: dict[Path, None] = {}
    missing: list[Outcome] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                if candidate.suffix.lower() in IMAGE_SUFFIXES and candidate.is_file():
                    found.setdefault(candidate, None)
        elif path.is_file():
            found.setdefault(path, None)
        else:
            missing.append(Outcome(str(path), "failed", error="no such file or folder"))
    return list(found), missing


def add_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from sam3_cli.options import HelpFormatter, add_connection_options, option, positive_seconds, whole_number

    parser = commands.add_parser(
        "encode",
        parents=parents,
        help="pre-warm a service with many images (files or folders), skipping those already cached",
        description="Send images to a running service's encoder so later prompts on them answer in "
        "milliseconds. Folders are searched recursively for "
        + " ".join(sorted(IMAGE_SUFFIXES))
        + " files. Images the store already holds are skipped (counted as cached) unless --force. "
        "A file that fails is reported and the run goes on; the exit code is 1 if any failed.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  sam3 encode photos/ --server localhost:50051\n"
        "  sam3 encode a.jpg b.png --server localhost:50051 --force --json encoded.json",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files and/or folders")
    option(parser, "--server", metavar="HOST:PORT", help="a `sam3 serve` or an encoder service (required)")
    option(parser, "--encoder-server", metavar="HOST:PORT", help="encoder service of a split deployment")
    add_connection_options(parser)
    parser.add_argument("--force", action="store_true", help="encode again even when the store holds the image")
    parser.add_argument("--jobs", "-j", type=whole_number(1), default=1, help="images in flight at once (default 1)")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=300.0, help="seconds one encode may take (default 300)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write one record per image as JSON, even when stopped early or by Ctrl-C (then the images "
        "not finished have status 'unfinished')",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sam3_cli.options import channel_settings, check_target
    from sam3_client import Client

    target = args.encoder_server or args.server
    if not target:
        raise UsageError(f"sam3 encode needs a service: pass --server HOST:PORT ({START_HINT})")
    check_target("--encoder-server" if args.encoder_server else "--server", target)
    images, missing = find_images(args.paths)
    if not images and not missing:
        raise CliError(f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) found in {' '.join(map(str, args.paths))}")
    started = time.perf_counter()
    outcomes: list[Outcome] = list(missing)
    stop: Fatal | KeyboardInterrupt | None = None
    progress = tqdm(total=len(images), unit="img", file=sys.stderr, disable=_progress_disabled(args.progress))
    with Client(target, settings=channel_settings(args)) as client, progress:
        try:
            for outcome in _encode_all(client, images, args):
                outcomes.append(outcome)
                progress.set_postfix_str(_counts(outcomes), refresh=False)  # shown by the update: never a step behind
                progress.update(1)
        except (Fatal, KeyboardInterrupt) as reason:  # a Fatal is reported below as the error, not as a file
            stop = reason
    unfinished = _unfinished(images, outcomes, stop)
    interrupted = isinstance(stop, KeyboardInterrupt)
    _print_summary(outcomes, len(unfinished), time.perf_counter() - started, interrupted=interrupted)
    if args.json:
        records = sorted((asdict(o) for o in [*outcomes, *unfinished]), key=lambda r: r["path"])
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    if isinstance(stop, KeyboardInterrupt):
        raise stop  # the command's usual exit for Ctrl-C (130), now that what finished is written
    if isinstance(stop, Fatal):
        raise CliError(explain(stop.error, stop.error.target or target, timeout=args.timeout))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _progress_disabled(wanted: bool | None) -> bool | None:
    return None if wanted is None else not wanted  # tqdm: None = only on a terminal


def _encode_all(client: Any, images: list[Path], args: argparse.Namespace) -> Iterator[Outcome]:
    """Outcomes in completion order, `args.jobs` calls in flight. A service-wide failure (Fatal) or Ctrl-C
    (KeyboardInterrupt, raised in this, the main, thread) stops the run within the calls in flight: images
    not started are dropped and the client is closed, which cancels those calls instead of waiting for them."""
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [pool.submit(_encode_one, client, path, args) for path in images]
        for future in as_completed(futures):
            yield future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        client.close()
        raise
    pool.shutdown()


def _unfinished(images: list[Path], outcomes: Sequence[Outcome], stop: BaseException | None) -> list[Outcome]:
    """A record for every image the run did not finish, saying why (for --json: nothing goes missing)."""
    if isinstance(stop, Fatal):
        why = f"not finished: the run stopped ({stop.outcome.error})"
    elif isinstance(stop, KeyboardInterrupt):
        why = "not finished: interrupted (Ctrl-C)"
    else:
        return []
    done = {o.path for o in outcomes}
    return [Outcome(str(path), "unfinished", error=why) for path in images if str(path) not in done]


def _encode_one(client: Any, path: Path, args: argparse.Namespace) -> Outcome:
    from sam3_client import Reason, Sam3Error

    started = time.perf_counter()
    try:
        data = path.read_bytes()
    except OSError as error:
        return Outcome(str(path), "failed", error=f"cannot read: {error.strerror or error}")
    try:
        # A pre-warm: interactive encodes go first; a busy encoder is retried by the SDK within the timeout.
        result = client.encode(data, force=args.force, timeout=args.timeout, prewarm=True)
    except Sam3Error as error:
        target = error.target or args.encoder_server or args.server
        outcome = Outcome(str(path), "failed", error=explain(error, target, timeout=args.timeout))
        if error.code in _FATAL_CODES and error.reason != Reason.SHUTTING_DOWN:
            raise Fatal(outcome, error) from error
        return outcome
    return Outcome(
        str(path),
        "cached" if result.cached else "encoded",
        image_id=result.image_id,
        width=result.width,
        height=result.height,
        milliseconds=round((time.perf_counter() - started) * 1000, 1),
    )


def _counts(outcomes: Sequence[Outcome]) -> str:
    tally = {status: sum(o.status == status for o in outcomes) for status in ("encoded", "cached", "failed")}
    return ", ".join(f"{count} {status}" for status, count in tally.items())


def _print_summary(outcomes: Sequence[Outcome], unfinished: int, seconds: float, *, interrupted: bool) -> None:
    stopped = f"; {'interrupted' if interrupted else 'stopped early'}, {unfinished} not finished" if unfinished else ""
    images = "1 image" if len(outcomes) == 1 else f"{len(outcomes)} images"
    print(f"Summary: {_counts(outcomes)} ({images} in {seconds:.1f} s{stopped})")
    for outcome in outcomes:
        if outcome.status == "failed":
            print(f"  failed: {outcome.path}: {outcome.error}")
