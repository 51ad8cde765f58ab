"""The few ONNX messages cmc's runtime builds, written in protobuf's wire format.

onnxruntime runs a model from its serialized `ModelProto`; the usual way to build one is the
`onnx` package, whose import costs ~0.35 s here: a third of the whole cold-completion budget, for
graphs of one or two nodes. These graphs use six messages of `onnx.proto` (model, opset, graph,
node, attribute, tensor, value info), so they are written directly: a field is a varint key
(number << 3 | wire type) then a varint or a length-prefixed payload. Field numbers are those of
onnx.proto (proto2); `tests/test_runtime_ort.py` parses what this writes with the `onnx` package and
compares it with `onnx.helper`'s own build of the same graph.
"""

from __future__ import annotations

import numpy as np

IR_VERSION = 8
# TensorProto.DataType
FLOAT, UINT8, INT8, INT32, INT64 = 1, 2, 3, 6, 7
_NP_TYPES = {
    np.dtype(np.float32): FLOAT,
    np.dtype(np.uint8): UINT8,
    np.dtype(np.int8): INT8,
    np.dtype(np.int32): INT32,
    np.dtype(np.int64): INT64,
}
_ATTR_INT, _ATTR_INTS = 2, 7  # AttributeProto.AttributeType


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


Pieces = list  # a message as buffers to join once: weights are not copied on the way up


def _len(pieces: Pieces) -> int:
    return sum(memoryview(p).nbytes for p in pieces)


def _int(field: int, n: int) -> Pieces:
    return [_varint(field << 3) + _varint(n)]


def _bytes(field: int, payload: Pieces | bytes) -> Pieces:
    payload = [payload] if isinstance(payload, (bytes, memoryview)) else payload
    return [_varint(field << 3 | 2) + _varint(_len(payload)), *payload]


def _str(field: int, s: str) -> Pieces:
    return _bytes(field, s.encode())


def _cat(*parts: Pieces) -> Pieces:
    return [p for part in parts for p in part]


def tensor(name: str, array: np.ndarray) -> Pieces:
    """TensorProto: dims (1), data_type (2), name (8), raw_data (9, little-endian)."""
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    kind = _NP_TYPES[array.dtype.newbyteorder("=")]
    dims = _cat(*(_int(1, d) for d in array.shape))
    return _cat(dims, _int(2, kind), _str(8, name), _bytes(9, memoryview(array).cast("B")))


def value_info(name: str, elem_type: int, shape: list[int | str]) -> Pieces:
    """ValueInfoProto name (1), type (2) = TypeProto.tensor_type (1) {elem_type (1), shape (2)}; a
    str dimension is symbolic (dim_param, 2), an int fixed (dim_value, 1)."""
    dims = _cat(*(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in shape))
    tensor_type = _cat(_int(1, elem_type), _bytes(2, dims))
    return _cat(_str(1, name), _bytes(2, _bytes(1, tensor_type)))


def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> Pieces:
    """NodeProto input (1), output (2), op_type (4), attribute (5), domain (7); int and int-list
    attributes only (AttributeProto name 1, i 3, ints 8, type 20)."""
    out = _cat(*(_str(1, i) for i in inputs), *(_str(2, o) for o in outputs), _str(4, op))
    for key, value in attrs.items():
        if isinstance(value, (list, tuple)):
            body = _cat(_str(1, key), *(_int(8, v) for v in value), _int(20, _ATTR_INTS))
        else:
            body = _cat(_str(1, key), _int(3, int(value)), _int(20, _ATTR_INT))
        out += _bytes(5, body)
    if domain:
        out += _str(7, domain)
    return out


def model(
    nodes: list[Pieces],
    inputs: list[Pieces],
    outputs: list[Pieces],
    initializers: list[Pieces],
    opsets: dict[str, int],
    name: str = "cmc",
) -> bytes:
    """ModelProto ir_version (1), graph (7), opset_import (8); GraphProto node (1), name (2),
    initializer (5), input (11), output (12). The weights are copied once, here."""
    graph = _cat(
        *(_bytes(1, n) for n in nodes),
        _str(2, name),
        *(_bytes(5, t) for t in initializers),
        *(_bytes(11, i) for i in inputs),
        *(_bytes(12, o) for o in outputs),
    )
    opset = _cat(
        *(_bytes(8, _cat(_str(1, domain), _int(2, version))) for domain, version in opsets.items())
    )
    return b"".join(_cat(_int(1, IR_VERSION), _bytes(7, graph), opset))
