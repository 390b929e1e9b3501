"""Check that sam3.v1 only grows: compare the protos with the last released contract.

    python protos/breaking.py            # exit 1 and list what a released client would lose
    python protos/breaking.py --release  # at a release: record today's protos as the new baseline

The baseline, protos/released/sam3.v1.binpb, is the FileDescriptorSet of the released protos. Every
file, message, field, enum, value, service and rpc in it must still exist with the same number, name,
json name, type, cardinality, oneof and streaming (buf's FILE + WIRE_JSON rules, roughly), and every
top-level message, enum and service must still be declared in the file it was released in: generated
code is one module per file (Python's decoder_pb2.Box, Go and Java imports), so moving a type into
another file (say into common.proto, for a new file to share it) breaks every released client's imports
although the wire is the same. Adding is free, new files included: they import what they share.

One kind of change is allowed, and only where WIRE_COMPATIBLE lists it: a 64-bit integer field made
32-bit (int64 -> int32). Both are varints: every value in the 32-bit range is the same bytes on the
wire, and ProtoJSON readers accept a number or a string for either, so no released client misreads a
message. What it does change is the type in newly generated code (a string or Long in JavaScript becomes
a number, which is the point). A field goes on the list only where the server never sends a value
outside the 32-bit range.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorSet,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import PROTO_ROOT, descriptor_set

RELEASED = PROTO_ROOT / "released" / "sam3.v1.binpb"
_INT64, _INT32 = FieldDescriptorProto.TYPE_INT64, FieldDescriptorProto.TYPE_INT32
# field full name -> (released type, current type), with why the values always fit.
WIRE_COMPATIBLE: dict[str, tuple[int, int]] = {
    "sam3.v1.Mask.area": (_INT64, _INT32),  # at most the image's pixels, capped at 2^31 - 1 (ImageLimits)
    "sam3.v1.TensorSpec.shape": (_INT64, _INT32),  # embedding dimensions (hundreds)
}


def _messages(message: DescriptorProto, scope: str) -> Iterator[tuple[str, DescriptorProto]]:
    name = f"{scope}.{message.name}"
    yield name, message
    for nested in message.nested_type:
        yield from _messages(nested, name)


def _enums(files: FileDescriptorSet) -> dict[str, EnumDescriptorProto]:
    found = {}
    for file in files.file:
        found.update({f"{file.package}.{e.name}": e for e in file.enum_type})
        for file_message in file.message_type:
            for name, message in _messages(file_message, file.package):
                found.update({f"{name}.{e.name}": e for e in message.enum_type})
    return found


def _all_messages(files: FileDescriptorSet) -> dict[str, DescriptorProto]:
    return {name: m for file in files.file for top in file.message_type for name, m in _messages(top, file.package)}


def _field_changes(name: str, old: FieldDescriptorProto, new: FieldDescriptorProto) -> Iterator[str]:
    for attribute in ("name", "json_name", "label", "type_name"):
        if getattr(old, attribute) != getattr(new, attribute):
            yield f"{name}: {attribute} changed from {getattr(old, attribute)!r} to {getattr(new, attribute)!r}"
    if old.type != new.type and WIRE_COMPATIBLE.get(name) != (old.type, new.type):
        old_type, new_type = (FieldDescriptorProto.Type.Name(t) for t in (old.type, new.type))
        yield f"{name}: type changed from {old_type} to {new_type}"
    if old.HasField("oneof_index") != new.HasField("oneof_index"):
        yield f"{name}: moved into or out of a oneof"


def _message_changes(name: str, old: DescriptorProto, new: DescriptorProto) -> Iterator[str]:
    new_fields = {f.number: f for f in new.field}
    for field in old.field:
        current = new_fields.get(field.number)
        if current is None:
            yield f"{name}.{field.name} (field {field.number}) was removed"
        else:
            yield from _field_changes(f"{name}.{field.name}", field, current)
    old_oneofs = [o.name for o in old.oneof_decl]
    for field in old.field:
        current = new_fields.get(field.number)
        in_oneofs = current is not None and field.HasField("oneof_index") and current.HasField("oneof_index")
        if in_oneofs and old_oneofs[field.oneof_index] != new.oneof_decl[current.oneof_index].name:
            yield f"{name}.{field.name}: moved to another oneof"


def _declared(files: FileDescriptorSet) -> dict[str, str]:
    """Full name of every top-level message, enum and service -> the file that declares it."""
    found = {}
    for file in files.file:
        for declaration in (*file.message_type, *file.enum_type, *file.service):
            found[f"{file.package}.{declaration.name}"] = file.name
    return found


def _moved(released: FileDescriptorSet, current: FileDescriptorSet) -> Iterator[str]:
    now = _declared(current)
    for name, file in _declared(released).items():
        if name in now and now[name] != file:
            yield f"{name} moved from {file} to {now[name]} (generated code imports it from {file})"


def breaking_changes(released: FileDescriptorSet, current: FileDescriptorSet) -> list[str]:
    """What a client built from `released` would find broken in `current` (empty: v1 only grew)."""
    problems: list[str] = []
    current_files = {f.name: f for f in current.file}
    for file in released.file:
        if file.name not in current_files:
            problems.append(f"{file.name} was removed")
        elif current_files[file.name].package != file.package:
            problems.append(f"{file.name}: package changed from {file.package} to {current_files[file.name].package}")
    problems.extend(_moved(released, current))
    new_messages = _all_messages(current)
    for name, message in _all_messages(released).items():
        if name not in new_messages:
            problems.append(f"message {name} was removed")
        else:
            problems.extend(_message_changes(name, message, new_messages[name]))
    new_enums = _enums(current)
    for name, enum in _enums(released).items():
        values = {v.number: v.name for v in new_enums[name].value} if name in new_enums else None
        if values is None:
            problems.append(f"enum {name} was removed")
            continue
        for value in enum.value:
            if values.get(value.number) != value.name:
                problems.append(f"{name}: value {value.number} ({value.name}) was removed or renamed")
    new_services = {f"{f.package}.{s.name}": s for f in current.file for s in f.service}
    for file in released.file:
        for service in file.service:
            name = f"{file.package}.{service.name}"
            methods = {m.name: m for m in new_services[name].method} if name in new_services else None
            if methods is None:
                problems.append(f"service {name} was removed")
                continue
            for method in service.method:
                now = methods.get(method.name)
                if now is None:
                    problems.append(f"rpc {name}.{method.name} was removed")
                    continue
                for attribute in ("input_type", "output_type", "client_streaming", "server_streaming"):
                    if getattr(method, attribute) != getattr(now, attribute):
                        problems.append(f"rpc {name}.{method.name}: {attribute} changed")
    return problems


def released() -> FileDescriptorSet:
    """The last released contract (committed)."""
    return FileDescriptorSet.FromString(RELEASED.read_bytes())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: check against the baseline, or (--release) replace it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", action="store_true", help="record the current protos as the released v1")
    args = parser.parse_args(argv)
    current = descriptor_set()
    if args.release:
        RELEASED.write_bytes(current.SerializeToString(deterministic=True))
        print(f"wrote {RELEASED.relative_to(PROTO_ROOT.parent)}")
        return 0
    problems = breaking_changes(released(), current)
    for problem in problems:
        print(f"breaking: {problem}", file=sys.stderr)
    print(f"{len(problems)} breaking change(s) against {RELEASED.name}" if problems else "protos: v1 only grew")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
