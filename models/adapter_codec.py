"""A LoRA adapter's bytes, in every form it travels: PEFT safetensors and ExecuTorch ``.ptd``.

One adapter goes through several hands each round: the exporter writes the initial one, the
coordinator stores and ships each global one, devices load it and upload their update. Each
form is bytes in, bytes out here, on numpy arrays, so that the coordinator can publish an
adapter without importing torch or ExecuTorch and without a temporary file.

**Key names.** PEFT files key a LoRA tensor ``base_model.model.….lora_A.weight``. Inside a
compiled training program (ExecuTorch's and ONNX Runtime's alike) the same tensor is
``model.base_model.model.….lora_A.default.weight``: the program wraps the PEFT model under the
attribute ``model`` (:data:`PROGRAM_WRAPPER`), and PEFT names its adapter ``default``.
:func:`program_key` and :func:`peft_key` convert between the two.

**The ``.ptd`` file** is ExecuTorch's flat-tensor format (schema ``flat_tensor.fbs``, file
identifier ``FT01``), which a training program compiled with external mutable weights loads
beside its ``.pte``::

    [flatbuffer root offset, "FT01"] [48-byte header "FH01": flatbuffer offset and size,
    segment base offset, segment data size] [rest of the flatbuffer] [zero padding]
    [segment 0: one tensor's float32 bytes] [padding] [segment 1] ...

The flatbuffer (a ``FlatTensor``: version, segments, named tensors with their layout) is
built here the way ExecuTorch's serializer has ``flatc`` build it from JSON, back to front with
fields ordered by size and identical vtables shared, so the bytes are the ones its serializer
writes (tests compare the two). Every tensor gets its own segment, never shared, because the
runtime trains them in place: a shared buffer would train every zero-initialized ``lora_B`` as one.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import numpy as np

#: The attribute under which a training program holds the PEFT model: ``model.`` in program keys.
PROGRAM_WRAPPER = "model"
#: The name PEFT gives the (only) adapter: ``.default.`` before the leaf in program keys.
ADAPTER_NAME = "default"

#: ``metadata`` of the adapter safetensors PocketTune writes: PEFT and transformers load files
#: that say they hold PyTorch tensors.
SAFETENSORS_METADATA = {"format": "pt"}


# --- key names ---------------------------------------------------------------------------------

def program_key(peft_key: str) -> str:
    """``base_model.model.….lora_A.weight`` (PEFT file) -> ``model.base_model.model.….lora_A.default.weight``."""
    head, _, leaf = peft_key.rpartition(".")
    return f"{PROGRAM_WRAPPER}.{head}.{ADAPTER_NAME}.{leaf}"


def peft_key(program_tensor_key: str) -> str:
    """Inverse of :func:`program_key`; ``ValueError`` for a name that is not a program's LoRA tensor."""
    prefix = PROGRAM_WRAPPER + "."
    if not program_tensor_key.startswith(prefix) or f".{ADAPTER_NAME}." not in program_tensor_key:
        raise ValueError(f"{program_tensor_key!r} is not a LoRA tensor of a PocketTune training program")
    head, _, leaf = program_tensor_key[len(prefix):].rpartition(".")
    if not head.endswith("." + ADAPTER_NAME):
        raise ValueError(f"{program_tensor_key!r} is not a LoRA tensor of a PocketTune training program")
    return f"{head[: -len(ADAPTER_NAME) - 1]}.{leaf}"


def _float32_arrays(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tensors`` sorted by key as C-contiguous float32 arrays (the only dtype adapters travel in)."""
    return {key: np.ascontiguousarray(tensors[key], dtype=np.float32) for key in sorted(tensors)}


# --- safetensors -------------------------------------------------------------------------------

def safetensors_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """PEFT-keyed tensors as the ``adapter_model.safetensors`` PEFT loads (float32, keys sorted)."""
    from safetensors.numpy import save

    return save(_float32_arrays(tensors), metadata=SAFETENSORS_METADATA)


def tensors_from_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file's bytes, by key, sorted."""
    from safetensors.numpy import load

    return dict(sorted(load(data).items()))


# --- .ptd: ExecuTorch's flat-tensor file ---------------------------------------------------------

_FILE_IDENTIFIER = b"FT01"
_HEADER_MAGIC = b"FH01"
_HEADER_LENGTH = 40                # magic, length, then four uint64: see the module docstring
_HEADER_SPACE = 48                 # the header padded to the flatbuffer's 16-byte alignment
_SEGMENT_ALIGNMENT = 128           # the serializer's default segment alignment ...
_TENSOR_ALIGNMENT = 64             # ... and each tensor's (SIMD loads on phones); segments use both
_FLAT_TENSOR_VERSION = 0
_SCALAR_TYPE_FLOAT = 6             # executorch_flatbuffer.ScalarType.FLOAT


class _FlatBufferBuilder:
    """The few operations of FlatBuffers' C++ builder that a ``FlatTensor`` needs, with its layout.

    A flatbuffer is written back to front: children first, each offset pointing forward to
    them. Positions are counted from the end of the buffer (what the C++ builder calls its
    size), since the front is still being written.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._min_alignment = 1
        self._vtables: list[int] = []            # positions of the vtables written, oldest first
        self._fields: list[tuple[int, int]] = []  # (position, field index) in the open table

    def _prepend(self, data: bytes) -> None:
        self._buffer[0:0] = data

    def _pre_align(self, length: int, alignment: int) -> None:
        """Pad so that, once ``length`` more bytes are written, the front is ``alignment``-aligned."""
        self._min_alignment = max(self._min_alignment, alignment)
        self._prepend(bytes(-(len(self._buffer) + length) % alignment))

    def _scalar(self, fmt: str, value: int) -> int:
        self._pre_align(0, struct.calcsize(fmt))
        self._prepend(struct.pack("<" + fmt, value))
        return len(self._buffer)

    def _reference(self, position: int) -> int:
        """The forward offset, from an offset about to be written, to the object at ``position``."""
        self._pre_align(0, 4)
        return len(self._buffer) - position + 4

    def string(self, text: str) -> int:
        data = text.encode()
        self._pre_align(len(data) + 1, 4)
        self._prepend(data + b"\0")
        return self._scalar("I", len(data))

    def scalar_vector(self, fmt: str, values: list[int]) -> int:
        width = struct.calcsize(fmt)
        self._pre_align(len(values) * width, 4)
        self._pre_align(len(values) * width, width)
        self._prepend(struct.pack(f"<{len(values)}{fmt}", *values))
        return self._scalar("I", len(values))

    def offset_vector(self, positions: list[int]) -> int:
        self._pre_align(len(positions) * 4, 4)
        for position in reversed(positions):
            self._scalar("I", self._reference(position))
        return self._scalar("I", len(positions))

    def start_table(self) -> int:
        self._fields = []
        return len(self._buffer)

    def add_scalar(self, index: int, fmt: str, value: int, default: int = 0) -> None:
        """A scalar field; a value equal to the schema's default is left out, as flatc does."""
        if value != default:
            self._fields.append((self._scalar(fmt, value), index))

    def add_offset(self, index: int, position: int) -> None:
        self._fields.append((self._scalar("I", self._reference(position)), index))

    def end_table(self, start: int) -> int:
        """Close the table: write its vtable, or point it at an identical one already written."""
        table = self._scalar("i", 0)
        size = max(4 + 2 * max((index for _, index in self._fields), default=-1) + 2, 4)
        vtable = bytearray(size)
        struct.pack_into("<HH", vtable, 0, size, table - start)
        for position, index in self._fields:
            struct.pack_into("<H", vtable, 4 + 2 * index, table - position)
        for existing in self._vtables:
            at = len(self._buffer) - existing
            if self._buffer[at:at + size] == vtable and struct.unpack_from("<H", self._buffer, at)[0] == size:
                vtable_position = existing
                break
        else:
            self._prepend(bytes(vtable))
            vtable_position = len(self._buffer)
            self._vtables.append(vtable_position)
        struct.pack_into("<i", self._buffer, len(self._buffer) - table, vtable_position - table)
        self._fields = []
        return table

    def finish(self, root: int, identifier: bytes) -> bytes:
        self._pre_align(4 + len(identifier), self._min_alignment)
        self._prepend(identifier)
        self._scalar("I", self._reference(root))
        return bytes(self._buffer)


def _flat_tensor_flatbuffer(layouts: list[tuple[str, tuple[int, ...]]], segments: list[tuple[int, int]]) -> bytes:
    """The ``FlatTensor`` flatbuffer: ``layouts`` (program key, shape) name segment i each, float32.

    Objects are built in the order ``flatc`` parses the JSON ExecuTorch gives it (field order of
    the schema's dataclasses), and a table's fields are written largest first, each size class
    in reverse field order: flatc's layout, so the bytes match ExecuTorch's serializer.
    """
    builder = _FlatBufferBuilder()
    segment_tables = []
    for offset, size in segments:                    # DataSegment {offset: uint64, size: uint64}
        start = builder.start_table()
        builder.add_scalar(1, "Q", size)
        builder.add_scalar(0, "Q", offset)
        segment_tables.append(builder.end_table(start))
    segments_vector = builder.offset_vector(segment_tables)
    named = []
    for index, (key, shape) in enumerate(layouts):
        key_string = builder.string(key)
        sizes = builder.scalar_vector("i", list(shape))
        dim_order = builder.scalar_vector("B", list(range(len(shape))))
        start = builder.start_table()                # TensorLayout {scalar_type: byte, sizes, dim_order}
        builder.add_offset(2, dim_order)
        builder.add_offset(1, sizes)
        builder.add_scalar(0, "b", _SCALAR_TYPE_FLOAT)
        layout = builder.end_table(start)
        start = builder.start_table()                # NamedData {key, segment_index: uint32, tensor_layout}
        builder.add_offset(2, layout)
        builder.add_scalar(1, "I", index)
        builder.add_offset(0, key_string)
        named.append(builder.end_table(start))
    named_vector = builder.offset_vector(named)
    start = builder.start_table()                    # FlatTensor {version: uint32, segments, named_data}
    builder.add_offset(2, named_vector)
    builder.add_offset(1, segments_vector)
    builder.add_scalar(0, "I", _FLAT_TENSOR_VERSION)
    return builder.finish(builder.end_table(start), _FILE_IDENTIFIER)


def _aligned(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def ptd_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """PEFT-keyed LoRA tensors as the ``.ptd`` a training program loads (float32, keys sorted).

    ``ValueError`` for a tensor that is not floating point: the programs train float32 only,
    and a silent cast of integers would hide a caller's mistake.
    """
    for key, value in tensors.items():
        if not np.issubdtype(np.asarray(value).dtype, np.floating):
            raise ValueError(f"LoRA tensor {key} is {np.asarray(value).dtype}; the training program expects float32")
    arrays = _float32_arrays(tensors)
    alignment = math.lcm(_SEGMENT_ALIGNMENT, _TENSOR_ALIGNMENT)
    segments, data, end = [], bytearray(), 0
    for array in arrays.values():
        offset = _aligned(end, alignment)
        data += bytes(offset - end) + array.tobytes()
        segments.append((offset, array.nbytes))
        end = offset + array.nbytes
    flatbuffer = _flat_tensor_flatbuffer([(program_key(key), array.shape) for key, array in arrays.items()], segments)
    segment_base = _aligned(len(flatbuffer) + _HEADER_SPACE, _SEGMENT_ALIGNMENT)
    header = (_HEADER_MAGIC + struct.pack("<IQQQQ", _HEADER_LENGTH, _HEADER_SPACE, len(flatbuffer), segment_base,
                                          len(data))).ljust(_HEADER_SPACE, b"\0")
    # The header goes right after the root offset and file identifier, so the root moves by its size.
    root = struct.unpack_from("<I", flatbuffer)[0] + _HEADER_SPACE
    front = struct.pack("<I", root) + flatbuffer[4:8] + header + flatbuffer[8:]
    return front.ljust(segment_base, b"\0") + bytes(data)


class _FlatBufferReader:
    """Fields of a flatbuffer's tables, by field index (absent fields read as the default)."""

    def __init__(self, data: bytes):
        self.data = data

    def _u32(self, position: int) -> int:
        return struct.unpack_from("<I", self.data, position)[0]

    def root(self) -> int:
        return self._u32(0)

    def field(self, table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", self.data, table)[0]
        vtable_size = struct.unpack_from("<H", self.data, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vtable_size:
            return None
        offset = struct.unpack_from("<H", self.data, vtable + slot)[0]
        return table + offset if offset else None

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        position = self.field(table, index)
        return default if position is None else struct.unpack_from("<" + fmt, self.data, position)[0]

    def target(self, table: int, index: int) -> int | None:
        """Where the offset field ``index`` points (a table, vector or string), or None."""
        position = self.field(table, index)
        return None if position is None else position + self._u32(position)

    def tables(self, table: int, index: int) -> list[int]:
        vector = self.target(table, index)
        if vector is None:
            return []
        return [vector + 4 + 4 * i + self._u32(vector + 4 + 4 * i) for i in range(self._u32(vector))]

    def scalars(self, table: int, index: int, fmt: str) -> tuple[int, ...]:
        vector = self.target(table, index)
        if vector is None:
            return ()
        return struct.unpack_from(f"<{self._u32(vector)}{fmt}", self.data, vector + 4)

    def string(self, table: int, index: int) -> str:
        text = self.target(table, index)
        return "" if text is None else self.data[text + 4:text + 4 + self._u32(text)].decode()


def tensors_from_ptd(data: bytes) -> dict[str, np.ndarray]:
    """A LoRA ``.ptd``'s tensors back under PEFT keys, sorted (float32 arrays that own their memory).

    ``ValueError`` for bytes that are not a flat-tensor file, a newer version of the format,
    or an entry that is not a float32 tensor.
    """
    data = bytes(data)
    if len(data) < 8 + _HEADER_LENGTH or data[4:8] != _FILE_IDENTIFIER or data[8:12] != _HEADER_MAGIC:
        raise ValueError("not an ExecuTorch flat-tensor (.ptd) file")
    segment_base = struct.unpack_from("<Q", data, 8 + 24)[0]
    try:
        reader = _FlatBufferReader(data)
        root = reader.root()
        version = reader.scalar(root, 0, "I")
        if version > _FLAT_TENSOR_VERSION:
            raise ValueError(f"flat-tensor version {version} is newer than this reader ({_FLAT_TENSOR_VERSION})")
        segments = [(reader.scalar(t, 0, "Q"), reader.scalar(t, 1, "Q")) for t in reader.tables(root, 1)]
        tensors = {}
        for entry in reader.tables(root, 2):
            key = reader.string(entry, 0)
            layout = reader.target(entry, 2)
            if layout is None or reader.scalar(layout, 0, "b") != _SCALAR_TYPE_FLOAT:
                raise ValueError(f"entry {key} is not a float32 tensor")
            shape = reader.scalars(layout, 1, "i")
            offset, size = segments[reader.scalar(entry, 1, "I")]
            count = math.prod(shape)
            if count * 4 > size:
                raise ValueError(f"entry {key} has shape {list(shape)} but its segment holds {size} bytes")
            array = np.frombuffer(data, dtype="<f4", count=count, offset=segment_base + offset)
            tensors[peft_key(key)] = array.reshape(shape).astype(np.float32)   # a copy: writable, owns its memory
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"damaged flat-tensor (.ptd) file: {exc}") from None
    return dict(sorted(tensors.items()))

