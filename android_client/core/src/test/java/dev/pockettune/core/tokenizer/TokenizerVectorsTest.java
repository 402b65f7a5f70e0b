package dev.pockettune.core.tokenizer;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.http.Sha256;
import dev.pockettune.core.json.Json;
import dev.pockettune.core.testing.Paths2;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

/**
 * {@code tests/protocol/tokenizer_vectors.json}: texts and the ids Python's transformers gives for
 * them (tests/android/test_tokenizer_vectors.py checks the same file against transformers). The
 * JVM tokenizer must give the same ids, for the tiny test model's tokenizer (embedded in the file)
 * and for SmolLM2-135M's (found by its sha256, see {@link #tokenizerJson}).
 */
public class TokenizerVectorsTest {
    private static JSONObject vectors() throws Exception {
        Path file = Paths2.protocolDir().resolve("tokenizer_vectors.json");
        return Json.parseObject(Files.readAllBytes(file), file.toString());
    }

    /**
     * The tokenizer.json an entry was made with: embedded text, else
     * {@code $POCKETTUNE_TOKENIZER_DIR/<name>/tokenizer.json} (the pytest wrapper exports the
     * tokenizers there exactly as the exporter does), else the smollm2 cache of models/registry.py.
     * Its sha256 must be the one recorded: vectors made with another file prove nothing.
     */
    static String tokenizerJson(JSONObject entry) throws Exception {
        String name = entry.getString("name");
        String expectedSha = entry.getString("tokenizer_json_sha256");
        List<Path> candidates = new ArrayList<>();
        if (entry.has("tokenizer_json_text")) {
            String text = entry.getString("tokenizer_json_text");
            assertEquals(name + ": embedded tokenizer.json sha256", expectedSha,
                    Sha256.of(text.getBytes(StandardCharsets.UTF_8)));
            return text;
        }
        String dir = System.getProperty("pockettune.tokenizerDir");
        if (dir != null && !dir.isEmpty()) {
            candidates.add(Paths.get(dir, name, HfTokenizer.FILE));
        }
        String cache = System.getenv("POCKETTUNE_CACHE");
        Path cacheDir = cache != null ? Paths.get(cache) : Paths.get(System.getProperty("user.home"), ".cache", "pockettune");
        candidates.add(cacheDir.resolve("models").resolve(name).resolve(HfTokenizer.FILE));
        for (Path candidate : candidates) {
            if (Files.isRegularFile(candidate)) {
                byte[] bytes = Files.readAllBytes(candidate);
                if (Sha256.of(bytes).equals(expectedSha)) {
                    return new String(bytes, StandardCharsets.UTF_8);
                }
            }
        }
        fail(name + ": no tokenizer.json with sha256 " + expectedSha + " at " + candidates + ". Run the JVM tests "
                + "through pytest (tests/android/test_jvm_core.py exports it), or set POCKETTUNE_TOKENIZER_DIR to a "
                + "folder holding " + name + "/tokenizer.json as the exporter ships it.");
        return null;
    }

    @Test
    public void javaTokenizerGivesTheIdsTransformersGives() throws Exception {
        JSONArray tokenizers = vectors().getJSONArray("tokenizers");
        assertTrue("the vectors cover at least the tiny and the SmolLM2 tokenizer", tokenizers.length() >= 2);
        int checked = 0;
        StringBuilder failures = new StringBuilder();
        for (int t = 0; t < tokenizers.length(); t++) {
            JSONObject entry = tokenizers.getJSONObject(t);
            HfTokenizer tokenizer = HfTokenizer.fromJson(tokenizerJson(entry));
            boolean special = entry.optBoolean("add_special_tokens", false);
            JSONArray cases = entry.getJSONArray("cases");
            for (int c = 0; c < cases.length(); c++) {
                JSONObject item = cases.getJSONObject(c);
                String text = item.getString("text");
                JSONArray expectedJson = item.getJSONArray("ids");
                List<Integer> expected = new ArrayList<>();
                for (int i = 0; i < expectedJson.length(); i++) {
                    expected.add(expectedJson.getInt(i));
                }
                List<Integer> actual = tokenizer.encode(text, special);
                if (!expected.equals(actual)) {
                    failures.append("\n").append(entry.getString("name")).append(" ").append(JSONObject.quote(text))
                            .append("\n  python: ").append(expected).append("\n  java:   ").append(actual);
                }
                checked++;
            }
        }
        assertEquals("ids differ from transformers:" + failures, "", failures.toString());
        assertTrue(checked >= 20);
    }
}
