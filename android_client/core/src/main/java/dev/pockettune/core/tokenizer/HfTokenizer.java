package dev.pockettune.core.tokenizer;

import dev.pockettune.core.json.Json;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * A Hugging Face {@code tokenizer.json} (the file the exporter ships in the artifact's
 * {@code tokenizer/} directory), encoding text to exactly the ids the Python side gets from
 * {@code tokenizer(text, add_special_tokens=...)["input_ids"]}.
 *
 * <p>Pipeline, as in the Rust library: added tokens are found in the raw text; the text between
 * them is normalized, pre-tokenized ({@link PreTokenizer}) and each piece BPE-encoded
 * ({@link BpeModel}); special tokens from the post-processor are added only when asked.
 * Shared test vectors ({@code tests/protocol/tokenizer_vectors.json}) hold both sides to this.
 */
public final class HfTokenizer {
    public static final String FILE = "tokenizer.json";
    public static final String CONFIG_FILE = "tokenizer_config.json";

    private final AddedTokens added;
    private final Normalizer normalizer;
    private final PreTokenizer preTokenizer;
    private final BpeModel model;
    private final PostProcessor postProcessor;

    private HfTokenizer(JSONObject json) {
        Object truncation = json.opt("truncation");
        Object padding = json.opt("padding");
        if ((truncation != null && truncation != JSONObject.NULL) || (padding != null && padding != JSONObject.NULL)) {
            throw new UnsupportedTokenizerException("tokenizer.json with built-in truncation or padding; the "
                    + "manifest's rules are applied by the caller instead");
        }
        normalizer = Normalizer.fromJson(json.opt("normalizer"));
        added = new AddedTokens(json.optJSONArray("added_tokens"), normalizer.isIdentity());
        preTokenizer = PreTokenizer.fromJson(json.opt("pre_tokenizer"));
        JSONObject modelJson = json.optJSONObject("model");
        if (modelJson == null) {
            throw new UnsupportedTokenizerException("tokenizer.json has no model");
        }
        model = new BpeModel(modelJson);
        postProcessor = PostProcessor.fromJson(json.opt("post_processor"), this);
    }

    public static HfTokenizer fromJson(String tokenizerJson) {
        return new HfTokenizer(Json.parseObject(tokenizerJson, "tokenizer.json"));
    }

    /** {@code dir/tokenizer.json}, as {@code save_pretrained} writes it. */
    public static HfTokenizer load(Path dir) throws IOException {
        return fromJson(new String(Files.readAllBytes(dir.resolve(FILE)), java.nio.charset.StandardCharsets.UTF_8));
    }

    /** The ids of {@code text}; {@code addSpecialTokens} as the manifest's tokenizer section says. */
    public List<Integer> encode(String text, boolean addSpecialTokens) {
        List<Integer> ids = new ArrayList<>();
        for (AddedTokens.Segment segment : added.split(text)) {
            if (segment.id >= 0) {
                ids.add(segment.id);
                continue;
            }
            String normalized = normalizer.apply(segment.text);
            List<String> pieces = new ArrayList<>();
            pieces.add(normalized);
            for (String piece : preTokenizer.apply(pieces)) {
                for (int id : model.tokenize(piece)) {
                    ids.add(id);
                }
            }
        }
        return addSpecialTokens ? postProcessor.apply(ids) : ids;
    }

    /** Encoding without special tokens, as PocketTune's manifests ask ({@code add_special_tokens: false}). */
    public List<Integer> encode(String text) {
        return encode(text, false);
    }

    /** The id of a token: an added token, else a vocabulary entry; null if neither. */
    public Integer tokenToId(String token) {
        Integer id = added.idOf(token);
        return id != null ? id : model.tokenToId(token);
    }

    /**
     * The padding id {@code tokenizer_config.json} implies (its {@code pad_token}, else its
     * {@code eos_token}, as {@code models.batching.pad_token_id} does), or null when it names
     * neither. The device compares it with the manifest's {@code pad_token_id}.
     */
    public static Integer padTokenIdFromConfig(Path dir, HfTokenizer tokenizer) throws IOException {
        Path config = dir.resolve(CONFIG_FILE);
        if (!Files.isRegularFile(config)) {
            return null;
        }
        JSONObject json = Json.parseObject(Files.readAllBytes(config), CONFIG_FILE);
        for (String key : new String[] {"pad_token", "eos_token"}) {
            Object value = json.opt(key);
            String content = value instanceof String ? (String) value
                    : value instanceof JSONObject ? ((JSONObject) value).optString("content", null) : null;
            if (content != null) {
                Integer id = tokenizer.tokenToId(content);
                if (id != null) {
                    return id;
                }
            }
        }
        return null;
    }

    /** The {@code post_processor}: what {@code add_special_tokens=True} adds around the ids. */
    abstract static class PostProcessor {
        abstract List<Integer> apply(List<Integer> ids);

        static PostProcessor fromJson(Object spec, HfTokenizer tokenizer) {
            if (spec == null || spec == JSONObject.NULL) {
                return identity();
            }
            JSONObject object = (JSONObject) spec;
            String type = object.optString("type");
            if ("ByteLevel".equals(type)) {
                return identity();   // only adjusts offsets
            }
            if (!"TemplateProcessing".equals(type)) {
                return unsupported(type);
            }
            JSONArray single = object.optJSONArray("single");
            JSONObject specials = object.optJSONObject("special_tokens");
            List<Object> template = new ArrayList<>();   // Integer ids (special) or the marker "A"
            for (int i = 0; single != null && i < single.length(); i++) {
                JSONObject item = single.optJSONObject(i);
                if (item.has("Sequence")) {
                    template.add("A");
                } else if (item.has("SpecialToken")) {
                    String name = item.optJSONObject("SpecialToken").optString("id");
                    JSONObject special = specials == null ? null : specials.optJSONObject(name);
                    JSONArray ids = special == null ? null : special.optJSONArray("ids");
                    if (ids == null) {
                        return unsupported("TemplateProcessing with an undefined special token " + name);
                    }
                    for (int k = 0; k < ids.length(); k++) {
                        template.add(ids.optInt(k));
                    }
                }
            }
            return new PostProcessor() {
                @Override
                List<Integer> apply(List<Integer> ids) {
                    List<Integer> out = new ArrayList<>();
                    for (Object part : template) {
                        if (part instanceof Integer) {
                            out.add((Integer) part);
                        } else {
                            out.addAll(ids);
                        }
                    }
                    return out;
                }
            };
        }

        private static PostProcessor identity() {
            return new PostProcessor() {
                @Override
                List<Integer> apply(List<Integer> ids) {
                    return ids;
                }
            };
        }

        /** Refuses only when special tokens are actually asked for. */
        private static PostProcessor unsupported(String what) {
            return new PostProcessor() {
                @Override
                List<Integer> apply(List<Integer> ids) {
                    throw new UnsupportedTokenizerException("post-processor '" + what + "' is not supported");
                }
            };
        }
    }
}
