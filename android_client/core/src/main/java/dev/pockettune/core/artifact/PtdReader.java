package dev.pockettune.core.artifact;

import dev.pockettune.core.training.NamedTensor;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Reads an ExecuTorch flat-tensor file ({@code .ptd}, schema {@code flat_tensor.fbs}): the
 * adapter a round starts from, as the training program loads it.
 *
 * <p>Why a phone reads it at all: before spending seconds and hundreds of MB loading a program,
 * {@link dev.pockettune.core.device.TaskRunner} checks that the start adapter holds exactly the
 * manifest's LoRA tensors with the manifest's shapes; a mismatched adapter would otherwise fail
 * deep inside the native runtime. Tests also use the values (a test trainer perturbs them).
 *
 * <p>Layout: a flatbuffer whose 4-byte identifier ({@code FT01}) is followed by an extended header
 * ({@code FH01}, length, flatbuffer offset and size, segment base offset and size, little-endian);
 * the flatbuffer's {@code named_data} names each tensor, its layout and its segment.
 * Only float32 tensors in contiguous dim order are accepted (what the exporter writes).
 */
public final class PtdReader {
    private static final int SCALAR_FLOAT = 6;   // executorch_flatbuffer.ScalarType.FLOAT

    private final ByteBuffer buf;
    private final String source;

    private PtdReader(byte[] data, String source) {
        this.buf = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        this.source = source;
    }

    public static List<NamedTensor> read(Path path) throws IOException {
        return read(Files.readAllBytes(path), path.toString());
    }

    /** Tensors under the program's keys, in file order. */
    public static List<NamedTensor> read(byte[] data, String source) throws IOException {
        return new PtdReader(data, source).tensors();
    }

    private IOException bad(String why) {
        return new IOException(source + " is not a readable ExecuTorch .ptd: " + why);
    }

    private List<NamedTensor> tensors() throws IOException {
        try {
            return parse();
        } catch (IndexOutOfBoundsException | IllegalArgumentException | java.nio.BufferUnderflowException e) {
            throw bad("offsets point outside the file (" + e + ")");
        }
    }

    private List<NamedTensor> parse() throws IOException {
        if (buf.capacity() < 48) {
            throw bad("too short");
        }
        String identifier = ascii(4, 4);
        if (!identifier.startsWith("FT")) {
            throw bad("identifier " + identifier + " is not FT..");
        }
        if (!"FH01".equals(ascii(8, 4))) {
            throw bad("no FH01 extended header");
        }
        long segmentBase = buf.getLong(8 + 24);
        int root = buf.getInt(0);
        int segments = vectorField(root, 1);
        int namedData = vectorField(root, 2);
        if (segments < 0 || namedData < 0) {
            throw bad("missing segments or named_data");
        }
        int segmentCount = buf.getInt(segments);
        long[] segOffset = new long[segmentCount];
        long[] segSize = new long[segmentCount];
        for (int i = 0; i < segmentCount; i++) {
            int table = indirect(segments + 4 + 4 * i);
            segOffset[i] = scalarLong(table, 0);
            segSize[i] = scalarLong(table, 1);
        }
        int count = buf.getInt(namedData);
        List<NamedTensor> tensors = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            int entry = indirect(namedData + 4 + 4 * i);
            int keyPos = field(entry, 0);
            if (keyPos < 0) {
                throw bad("a named_data entry has no key");
            }
            String key = string(indirect(keyPos));
            int segmentIndex = (int) scalarUInt(entry, 1);
            int layoutPos = field(entry, 2);
            if (layoutPos < 0) {
                throw bad(key + " has no tensor layout");
            }
            int layout = indirect(layoutPos);
            int scalarPos = field(layout, 0);
            int scalarType = scalarPos < 0 ? 0 : buf.get(scalarPos);
            if (scalarType != SCALAR_FLOAT) {
                throw bad(key + " is scalar type " + scalarType + ", not float32");
            }
            long[] shape = intVector(layout, 1);
            long[] dimOrder = byteVector(layout, 2);
            for (int d = 0; d < dimOrder.length; d++) {
                if (dimOrder[d] != d) {
                    throw bad(key + " is not in contiguous dim order");
                }
            }
            if (segmentIndex < 0 || segmentIndex >= segmentCount) {
                throw bad(key + " names segment " + segmentIndex + " of " + segmentCount);
            }
            long numel = 1;
            for (long d : shape) {
                numel *= d;
            }
            if (numel * 4 > segSize[segmentIndex]) {
                throw bad(key + ": segment of " + segSize[segmentIndex] + " bytes cannot hold " + numel + " floats");
            }
            long start = segmentBase + segOffset[segmentIndex];
            float[] values = new float[Math.toIntExact(numel)];
            for (int v = 0; v < values.length; v++) {
                values[v] = buf.getFloat(Math.toIntExact(start + 4L * v));
            }
            tensors.add(new NamedTensor(key, shape, values));
        }
        return Collections.unmodifiableList(tensors);
    }

    // --- flatbuffer primitives -------------------------------------------------------------------

    /** Absolute position of field {@code id} of the table at {@code table}, or -1 if absent. */
    private int field(int table, int id) {
        int vtable = table - buf.getInt(table);
        int vtableSize = Short.toUnsignedInt(buf.getShort(vtable));
        int slot = 4 + 2 * id;
        if (slot >= vtableSize) {
            return -1;
        }
        int offset = Short.toUnsignedInt(buf.getShort(vtable + slot));
        return offset == 0 ? -1 : table + offset;
    }

    private int indirect(int position) {
        return position + buf.getInt(position);
    }

    private int vectorField(int table, int id) {
        int pos = field(table, id);
        return pos < 0 ? -1 : indirect(pos);
    }

    private long scalarLong(int table, int id) {
        int pos = field(table, id);
        return pos < 0 ? 0 : buf.getLong(pos);
    }

    private long scalarUInt(int table, int id) {
        int pos = field(table, id);
        return pos < 0 ? 0 : Integer.toUnsignedLong(buf.getInt(pos));
    }

    private long[] intVector(int table, int id) {
        int vector = vectorField(table, id);
        if (vector < 0) {
            return new long[0];
        }
        long[] out = new long[buf.getInt(vector)];
        for (int i = 0; i < out.length; i++) {
            out[i] = buf.getInt(vector + 4 + 4 * i);
        }
        return out;
    }

    private long[] byteVector(int table, int id) {
        int vector = vectorField(table, id);
        if (vector < 0) {
            return new long[0];
        }
        long[] out = new long[buf.getInt(vector)];
        for (int i = 0; i < out.length; i++) {
            out[i] = Byte.toUnsignedInt(buf.get(vector + 4 + i));
        }
        return out;
    }

    private String string(int position) {
        int length = buf.getInt(position);
        byte[] bytes = new byte[length];
        for (int i = 0; i < length; i++) {
            bytes[i] = buf.get(position + 4 + i);
        }
        return new String(bytes, StandardCharsets.UTF_8);
    }

    private String ascii(int position, int length) {
        byte[] bytes = new byte[length];
        for (int i = 0; i < length; i++) {
            bytes[i] = buf.get(position + i);
        }
        return new String(bytes, StandardCharsets.US_ASCII);
    }
}
