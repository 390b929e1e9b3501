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
    """An option whose default comes from its SAM3_* environment variable, which --help names."""
    variable = env_name(flag)
    if variable in os.environ:
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
