"""Lint protos/sam3/v1 with the buf rules that matter for a contract read from many languages.

    python protos/lint.py    # exit 1 and list the findings (CI runs it in `make lint` and tests)

Checked (buf's rule names where buf has one):
- PACKAGE_VERSION_SUFFIX, PACKAGE_DIRECTORY_MATCH: package `sam3.v1`, files in sam3/v1/.
- ENUM_ZERO_VALUE_SUFFIX, ENUM_VALUE_PREFIX, ENUM_VALUE_UPPER_SNAKE_CASE, ENUM_PASCAL_CASE.
- ENUM_ZERO_VALUE_REFUSED (ours): the zero value's comment says it is refused (or never sent). The
  server's behaviour behind that sentence is tested in tests/test_service_behaviour.py.
- MESSAGE_PASCAL_CASE, FIELD_LOWER_SNAKE_CASE, ONEOF_LOWER_SNAKE_CASE, SERVICE_SUFFIX, RPC_PASCAL_CASE.
- COMMENT_MESSAGE/FIELD/ONEOF/ENUM/ENUM_VALUE/SERVICE/RPC: every declaration has a leading comment.
- LANGUAGE_NEUTRAL (ours): comments name no Python-only API (HasField, numpy, grpcio, ...).

Not checked, on purpose: RPC_REQUEST_STANDARD_NAME / RPC_RESPONSE_STANDARD_NAME /
RPC_REQUEST_RESPONSE_UNIQUE (SegmentStream reuses SegmentRequest, GetModelInfo returns ModelInfo):
renaming them would break every v1 client's generated code; a v2 would follow them.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import PROTO_ROOT, descriptor_set

PACKAGE_VERSION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.v[1-9][0-9]*$")
PASCAL = re.compile(r"^[A-Z][a-zA-Z0-9]*$")
LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
# Words that only make sense to one language's users.
PYTHON_ONLY = re.compile(r"\b(HasField|WhichOneof|np\.\w+|numpy|grpcio|pb2|Python)\b")
# Field numbers in descriptor.proto, for the paths of SourceCodeInfo.Location.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM, _ONEOF = 2, 3, 4, 8
_VALUE, _METHOD = 2, 2


@dataclass(frozen=True)
class Finding:
    """One rule broken by one declaration."""

    file: str
    name: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.name}: {self.rule}: {self.message}"


def upper_snake(pascal: str) -> str:
    """MaskFormat -> MASK_FORMAT (buf's expected prefix of the enum's values)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", pascal).upper()


class _FileLinter:
    """The findings of one file; `comments` maps a declaration's path to its leading comment."""

    def __init__(self, file: FileDescriptorProto) -> None:
        self.file = file
        self.comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        self.findings: list[Finding] = []

    def add(self, name: str, rule: str, message: str) -> None:
        self.findings.append(Finding(self.file.name, name, rule, message))

    def commented(self, path: tuple[int, ...], name: str, kind: str) -> str:
        """The declaration's leading comment; a finding when there is none or it is Python-only."""
        comment = self.comments.get(path, "").strip()
        if not comment:
            self.add(name, f"COMMENT_{kind}", "needs a leading // comment saying what it means")
        elif found := PYTHON_ONLY.search(comment):
            self.add(name, "LANGUAGE_NEUTRAL", f"comment names {found.group(0)!r}; describe it for every language")
        return comment

    def run(self) -> list[Finding]:
        file = self.file
        package = file.package
        if not PACKAGE_VERSION.match(package):
            self.add(package or "(none)", "PACKAGE_VERSION_SUFFIX", "the package must end in a version, e.g. .v1")
        if Path(file.name).parent.as_posix() != package.replace(".", "/"):
            self.add(package, "PACKAGE_DIRECTORY_MATCH", f"{file.name} must live in {package.replace('.', '/')}/")
        for i, message in enumerate(file.message_type):
            self.message(message, (_MESSAGE, i), package)
        for i, enum in enumerate(file.enum_type):
            self.enum(enum, (_ENUM, i), package)
        for i, service in enumerate(file.service):
            name = f"{package}.{service.name}"
            self.commented((_SERVICE, i), name, "SERVICE")
            if not (PASCAL.match(service.name) and service.name.endswith("Service")):
                self.add(name, "SERVICE_SUFFIX", "services are PascalCase and end in 'Service'")
            for j, method in enumerate(service.method):
                self.commented((_SERVICE, i, _METHOD, j), f"{name}.{method.name}", "RPC")
                if not PASCAL.match(method.name):
                    self.add(f"{name}.{method.name}", "RPC_PASCAL_CASE", "rpc names are PascalCase")
        return self.findings

    def message(self, message: DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        name = f"{scope}.{message.name}"
        if message.options.map_entry:
            return  # map<k, v> entries are synthesised by protoc
        self.commented(path, name, "MESSAGE")
        if not PASCAL.match(message.name):
            self.add(name, "MESSAGE_PASCAL_CASE", "message names are PascalCase")
        for i, field in enumerate(message.field):
            self.commented((*path, _FIELD, i), f"{name}.{field.name}", "FIELD")
            if not LOWER_SNAKE.match(field.name):
                self.add(f"{name}.{field.name}", "FIELD_LOWER_SNAKE_CASE", "field names are lower_snake_case")
        for i, oneof in enumerate(message.oneof_decl):
            if any(f.proto3_optional and f.oneof_index == i for f in message.field):
                continue  # the synthetic oneof of a proto3 `optional` field
            self.commented((*path, _ONEOF, i), f"{name}.{oneof.name}", "ONEOF")
            if not LOWER_SNAKE.match(oneof.name):
                self.add(f"{name}.{oneof.name}", "ONEOF_LOWER_SNAKE_CASE", "oneof names are lower_snake_case")
        for i, nested in enumerate(message.nested_type):
            self.message(nested, (*path, _NESTED, i), name)
        for i, enum in enumerate(message.enum_type):
            self.enum(enum, (*path, _NESTED_ENUM, i), name)

    def enum(self, enum: EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
        name = f"{scope}.{enum.name}"
        self.commented(path, name, "ENUM")
        if not PASCAL.match(enum.name):
            self.add(name, "ENUM_PASCAL_CASE", "enum names are PascalCase")
        prefix = upper_snake(enum.name) + "_"
        for i, value in enumerate(enum.value):
            comment = self.commented((*path, _VALUE, i), f"{name}.{value.name}", "ENUM_VALUE")
            if not (UPPER_SNAKE.match(value.name) and value.name.startswith(prefix)):
                self.add(f"{name}.{value.name}", "ENUM_VALUE_PREFIX", f"values are UPPER_SNAKE_CASE starting {prefix}")
            if value.number != 0:
                continue
            if value.name != f"{prefix}UNSPECIFIED":
                self.add(f"{name}.{value.name}", "ENUM_ZERO_VALUE_SUFFIX", f"zero must be {prefix}UNSPECIFIED")
            if not re.search(r"\b(refused|never sent)\b", comment):
                self.add(
                    f"{name}.{value.name}",
                    "ENUM_ZERO_VALUE_REFUSED",
                    "the zero value is what an unset field reads as: document it as refused (or never sent), "
                    "never as a default",
                )


def lint(files: FileDescriptorSet) -> list[Finding]:
    """Every finding in the files (compiled with source info, or no comment will be found)."""
    return [finding for file in files.file for finding in _FileLinter(file).run()]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: lint protos/ (or the root given), print findings, exit 1 on any."""
    root = Path(argv[0]) if argv else PROTO_ROOT
    findings = lint(descriptor_set(root, source_info=True))
    for finding in findings:
        print(finding, file=sys.stderr)
    print(f"{len(findings)} lint finding(s) in {root}" if findings else "protos: lint clean")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
