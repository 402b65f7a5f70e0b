package dev.pockettune.core.artifact;

import dev.pockettune.core.json.JsonFields;
import dev.pockettune.core.json.ProtocolFormatException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * An artifact's {@code manifest.json} (export/manifest.py, export/pipeline.py): the parts a phone
 * uses. The device reads it before anything else: which files to fetch and their sha256, the fixed
 * [batch, seq] the program was compiled for, how to tokenize and pad, and which LoRA tensors it
 * trains (what an upload must contain). The schema is versioned; other versions are refused.
 */
public final class Manifest {
    public static final int SCHEMA_VERSION = 1;
    public static final String FILE = "manifest.json";

    /** One file of the artifact; {@code device}: a phone downloads it. */
    public static final class FileEntry {
        public final String path;
        public final String sha256;
        public final long size;
        public final boolean device;

        FileEntry(String path, String sha256, long size, boolean device) {
            this.path = path;
            this.sha256 = sha256;
            this.size = size;
            this.device = device;
        }
    }

    /** The manifest's {@code tokenizer} section. */
    public static final class TokenizerSection {
        public final String dir;
        public final long padTokenId;
        public final Long bosTokenId;
        public final Long eosTokenId;
        public final boolean addSpecialTokens;
        public final String paddingSide;
        public final String truncationSide;

        TokenizerSection(JsonFields f) {
            dir = f.requireString("dir");
            padTokenId = f.requireLong("pad_token_id");
            bosTokenId = f.optLong("bos_token_id");
            eosTokenId = f.optLong("eos_token_id");
            addSpecialTokens = f.requireBoolean("add_special_tokens");
            paddingSide = f.requireString("padding_side");
            truncationSide = f.requireString("truncation_side");
        }
    }

    public final JSONObject raw;
    public final Map<String, FileEntry> files;
    public final int batch;
    public final int seq;
    public final String programFile;
    public final String programMethod;
    public final String trainableDataFile;
    /** The frozen-prefix program ({@code prefix.pte}) for prefix-cache tiers, else null. */
    public final String prefixFile;
    public final String prefixMethod;
    public final int ignoreIndex;
    /**
     * The program's label-position head K ({@code program.loss_positions}): its loss runs the LM
     * head at the first K labelled positions of each row only, so a batch with a row labelled at
     * more must be refused before a step ({@code LossPositions.check}); the program cannot tell.
     * Null: the head at every position (also for manifests written before the field existed).
     */
    public final Integer lossPositions;
    public final TokenizerSection tokenizer;
    public final List<TensorSpec> loraTensors;

    private Manifest(JSONObject raw) {
        this.raw = raw;
        JsonFields root = JsonFields.of(raw, "manifest");
        long version = root.requireLong("schema_version");
        if (version != SCHEMA_VERSION) {
            throw new ProtocolFormatException("manifest schema version " + version + " is not supported by this app "
                    + "(expects " + SCHEMA_VERSION + "); update the app");
        }
        files = parseFiles(root.requireObject("files"));
        JsonFields tier = JsonFields.of(root.requireObject("tier"), "manifest.tier");
        batch = tier.requireInt("batch");
        seq = tier.requireInt("seq");
        JsonFields program = JsonFields.of(root.requireObject("program"), "manifest.program");
        programFile = program.requireString("file");
        programMethod = program.requireString("method");
        trainableDataFile = program.requireString("trainable_data_file");
        ignoreIndex = labelsIgnoreIndex(program.requireArray("inputs"));
        lossPositions = lossPositions(program.optLong("loss_positions"), seq);
        JSONObject prefix = root.optObject("prefix");
        if (prefix != null) {
            JsonFields p = JsonFields.of(prefix, "manifest.prefix");
            prefixFile = p.requireString("file");
            prefixMethod = p.requireString("method");
        } else {
            prefixFile = null;
            prefixMethod = null;
        }
        tokenizer = new TokenizerSection(JsonFields.of(root.requireObject("tokenizer"), "manifest.tokenizer"));
        JsonFields lora = JsonFields.of(root.requireObject("lora"), "manifest.lora");
        loraTensors = Collections.unmodifiableList(lora.requireList("tensors", Manifest::tensorSpec));
    }

    public static Manifest parse(JSONObject raw) {
        return new Manifest(raw);
    }

    private static Map<String, FileEntry> parseFiles(JSONObject object) {
        Map<String, FileEntry> entries = new LinkedHashMap<>();
        Iterator<String> paths = object.keys();
        while (paths.hasNext()) {
            String path = paths.next();
            JsonFields f = JsonFields.of(object.optJSONObject(path), "manifest.files." + path);
            entries.put(path, new FileEntry(path, f.requireString("sha256"), f.requireLong("size"),
                    f.requireBoolean("device")));
        }
        return Collections.unmodifiableMap(entries);
    }

    private static int labelsIgnoreIndex(JSONArray inputs) {
        for (int i = 0; i < inputs.length(); i++) {
            JSONObject input = inputs.optJSONObject(i);
            if (input != null && "labels".equals(input.optString("name")) && input.has("ignore_index")) {
                return input.optInt("ignore_index");
            }
        }
        throw new ProtocolFormatException("manifest.program.inputs has no 'labels' input with an ignore_index");
    }

    /** K in [1, seq - 1] (what the exporter accepts), or null; anything else is a broken manifest. */
    private static Integer lossPositions(Long value, int seq) {
        if (value == null) {
            return null;
        }
        if (value < 1 || value > seq - 1) {
            throw new ProtocolFormatException("manifest.program.loss_positions must be in [1, " + (seq - 1)
                    + "] (seq " + seq + "), got " + value);
        }
        return Math.toIntExact(value);
    }

    private static TensorSpec tensorSpec(JSONObject object, String path) {
        JsonFields f = JsonFields.of(object, path);
        String name = f.requireString("name");
        JSONArray dims = f.requireArray("shape");
        long[] shape = new long[dims.length()];
        for (int i = 0; i < shape.length; i++) {
            Object d = dims.opt(i);
            if (!(d instanceof Integer || d instanceof Long)) {
                throw new ProtocolFormatException(path + ".shape[" + i + "] must be an integer");
            }
            shape[i] = ((Number) d).longValue();
        }
        return new TensorSpec(name, shape, f.requireString("dtype"));
    }

    /** The files a phone downloads, in manifest order. */
    public List<FileEntry> deviceFiles() {
        List<FileEntry> device = new ArrayList<>();
        for (FileEntry entry : files.values()) {
            if (entry.device) {
                device.add(entry);
            }
        }
        return device;
    }

    public TensorSpec loraTensor(String name) {
        for (TensorSpec spec : loraTensors) {
            if (spec.name.equals(name)) {
                return spec;
            }
        }
        return null;
    }
}
