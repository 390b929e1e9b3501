"""Progress lines of an export: it takes seconds (tiny) to many minutes (full size), so say what is happening."""

from __future__ import annotations


def log(message: str) -> None:
    print(message, flush=True)
