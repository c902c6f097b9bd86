"""tf.train.Example records read and written without TensorFlow (protobuf wire format, by hand).

TFDS stores each example as a serialized `tf.train.Example`: a map from feature name to a list of
bytes, floats or int64s. That is all this module knows; it is enough for TFDS image datasets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

Feature = list[bytes] | list[int] | list[float]

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a protobuf message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _BYTES:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == _FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_feature(buf: bytes) -> Feature:
    for kind, _, payload in _fields(buf):  # oneof: bytes_list = 1, float_list = 2, int64_list = 3
        values: list = []
        for _, wire, value in _fields(payload):
            if kind == 1:
                values.append(bytes(value))
            elif kind == 2:
                values.extend(struct.unpack(f"<{len(value) // 4}f", value) if wire == _BYTES else [])
                if wire == _FIXED32:
                    values.append(struct.unpack("<f", value)[0])
            elif wire == _BYTES:  # packed int64s
                pos = 0
                while pos < len(value):
                    number, pos = _read_varint(value, pos)
                    values.append(_signed64(number))
            else:
                values.append(_signed64(value))
        return values
    return []


def parse_example(record: bytes) -> dict[str, Feature]:
    """{feature name: list of values} of a serialized tf.train.Example."""
    features: dict[str, Feature] = {}
    for field, _, payload in _fields(record):
        if field != 1:  # Example.features
            continue
        for _, _, entry in _fields(payload):  # Features.feature: map<string, Feature> entries
            name, value = "", b""
            for key, _, part in _fields(entry):
                if key == 1:
                    name = bytes(part).decode("utf-8")
                elif key == 2:
                    value = part
            features[name] = _parse_feature(value)
    return features


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _BYTES) + _varint(len(payload)) + payload


def serialize_example(features: dict[str, Feature]) -> bytes:
    """A serialized tf.train.Example from {name: list of bytes | ints | floats}; the inverse of parse_example."""
    entries = b""
    for name, values in features.items():
        if all(isinstance(v, (bytes, bytearray)) for v in values):
            inner = _field(1, b"".join(_field(1, bytes(v)) for v in values))
        elif all(isinstance(v, int) for v in values):
            inner = _field(3, _field(1, b"".join(_varint(v) for v in values)))
        else:
            inner = _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))
        entries += _field(1, _field(1, name.encode("utf-8")) + _field(2, inner))
    return _field(1, entries)
