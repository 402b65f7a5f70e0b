package dev.pockettune.core.tokenizer;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.PriorityQueue;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * The BPE model of a tokenizer.json: a piece starts as one symbol per character and adjacent
 * pairs are merged, always the pair with the lowest merge rank first and, among equal ranks, the
 * leftmost: the order the Rust library's priority queue produces. Merges are read in either
 * serialization ({@code "a b"} strings or {@code ["a", "b"]} pairs).
 */
final class BpeModel {
    private static final int CACHE_LIMIT = 20_000;

    private final Map<String, Integer> vocab = new HashMap<>();
    /** (left id, right id) -> {rank, merged id}. */
    private final Map<Long, int[]> merges = new HashMap<>();
    private final Integer unkId;
    private final String continuingPrefix;
    private final String endOfWordSuffix;
    private final boolean ignoreMerges;
    private final boolean byteFallback;
    private final boolean fuseUnk;
    private final Map<String, int[]> cache = new HashMap<>();

    BpeModel(JSONObject model) {
        String type = model.optString("type", "BPE");
        if (!"BPE".equals(type)) {
            throw new UnsupportedTokenizerException("model '" + type + "' is not supported on the phone (BPE only)");
        }
        Object dropout = model.opt("dropout");
        if (dropout instanceof Number && ((Number) dropout).doubleValue() > 0) {
            throw new UnsupportedTokenizerException("BPE dropout is random; ids would not be reproducible");
        }
        JSONObject vocabJson = model.optJSONObject("vocab");
        if (vocabJson == null) {
            throw new UnsupportedTokenizerException("BPE model without a vocab");
        }
        Iterator<String> tokens = vocabJson.keys();
        while (tokens.hasNext()) {
            String token = tokens.next();
            vocab.put(token, vocabJson.optInt(token));
        }
        continuingPrefix = stringOrNull(model, "continuing_subword_prefix");
        endOfWordSuffix = stringOrNull(model, "end_of_word_suffix");
        ignoreMerges = model.optBoolean("ignore_merges", false);
        byteFallback = model.optBoolean("byte_fallback", false);
        fuseUnk = model.optBoolean("fuse_unk", false);
        String unk = stringOrNull(model, "unk_token");
        unkId = unk == null ? null : vocab.get(unk);
        JSONArray mergeList = model.optJSONArray("merges");
        if (mergeList != null) {
            int prefixLength = continuingPrefix == null ? 0 : continuingPrefix.length();
            for (int rank = 0; rank < mergeList.length(); rank++) {
                String left;
                String right;
                Object item = mergeList.opt(rank);
                if (item instanceof JSONArray) {
                    left = ((JSONArray) item).optString(0);
                    right = ((JSONArray) item).optString(1);
                } else {
                    String text = String.valueOf(item);
                    int space = text.indexOf(' ');
                    if (space < 0) {
                        throw new UnsupportedTokenizerException("merge '" + text + "' is not 'a b'");
                    }
                    left = text.substring(0, space);
                    right = text.substring(space + 1);
                }
                Integer leftId = vocab.get(left);
                Integer rightId = vocab.get(right);
                String mergedToken = left + right.substring(Math.min(prefixLength, right.length()));
                Integer mergedId = vocab.get(mergedToken);
                if (leftId == null || rightId == null || mergedId == null) {
                    throw new UnsupportedTokenizerException("merge " + rank + " ('" + left + "', '" + right
                            + "') uses tokens missing from the vocab");
                }
                merges.putIfAbsent(pairKey(leftId, rightId), new int[] {rank, mergedId});
            }
        }
    }

    private static String stringOrNull(JSONObject object, String key) {
        Object value = object.opt(key);
        return value instanceof String ? (String) value : null;
    }

    private static long pairKey(int left, int right) {
        return ((long) left << 32) | (right & 0xffffffffL);
    }

    Integer tokenToId(String token) {
        return vocab.get(token);
    }

    int vocabSize() {
        return vocab.size();
    }

    /** The ids of one pre-tokenized piece. */
    int[] tokenize(String piece) {
        int[] cached = cache.get(piece);
        if (cached != null) {
            return cached;
        }
        int[] ids = encodeWord(piece);
        if (cache.size() >= CACHE_LIMIT) {
            cache.clear();
        }
        cache.put(piece, ids);
        return ids;
    }

    private int[] encodeWord(String piece) {
        if (ignoreMerges) {
            Integer whole = vocab.get(piece);
            if (whole != null) {
                return new int[] {whole};
            }
        }
        List<Integer> symbols = initialSymbols(piece);
        int n = symbols.size();
        int[] ids = new int[n];
        int[] prev = new int[n];
        int[] next = new int[n];
        boolean[] alive = new boolean[n];
        for (int i = 0; i < n; i++) {
            ids[i] = symbols.get(i);
            prev[i] = i - 1;
            next[i] = i + 1 < n ? i + 1 : -1;
            alive[i] = true;
        }
        // Entries: {rank, left position, merged id}; lowest rank first, then leftmost.
        PriorityQueue<int[]> queue = new PriorityQueue<>((a, b) -> a[0] != b[0] ? Integer.compare(a[0], b[0])
                : Integer.compare(a[1], b[1]));
        for (int i = 0; i + 1 < n; i++) {
            push(queue, ids, i, i + 1);
        }
        while (!queue.isEmpty()) {
            int[] top = queue.poll();
            int left = top[1];
            if (!alive[left] || next[left] < 0) {
                continue;
            }
            int right = next[left];
            int[] merge = merges.get(pairKey(ids[left], ids[right]));
            if (merge == null || merge[1] != top[2] || merge[0] != top[0]) {
                continue;   // stale: one side was merged since this entry was queued
            }
            ids[left] = top[2];
            alive[right] = false;
            next[left] = next[right];
            if (next[right] >= 0) {
                prev[next[right]] = left;
            }
            if (prev[left] >= 0) {
                push(queue, ids, prev[left], left);
            }
            if (next[left] >= 0) {
                push(queue, ids, left, next[left]);
            }
        }
        int count = 0;
        for (int i = 0; i < n; i++) {
            if (alive[i]) {
                count++;
            }
        }
        int[] out = new int[count];
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (alive[i]) {
                out[k++] = ids[i];
            }
        }
        return out;
    }

    private void push(PriorityQueue<int[]> queue, int[] ids, int left, int right) {
        int[] merge = merges.get(pairKey(ids[left], ids[right]));
        if (merge != null) {
            queue.add(new int[] {merge[0], left, merge[1]});
        }
    }

    /** One symbol per character, with byte fallback or the unknown token for characters not in the vocab. */
    private List<Integer> initialSymbols(String piece) {
        int[] cps = piece.codePoints().toArray();
        List<Integer> symbols = new ArrayList<>(cps.length);
        boolean lastWasUnk = false;
        for (int i = 0; i < cps.length; i++) {
            String symbol = new String(cps, i, 1);
            if (i > 0 && continuingPrefix != null) {
                symbol = continuingPrefix + symbol;
            }
            if (i == cps.length - 1 && endOfWordSuffix != null) {
                symbol = symbol + endOfWordSuffix;
            }
            Integer id = vocab.get(symbol);
            if (id != null) {
                symbols.add(id);
                lastWasUnk = false;
                continue;
            }
            if (byteFallback) {
                List<Integer> bytes = byteTokens(new String(cps, i, 1));
                if (bytes != null) {
                    symbols.addAll(bytes);
                    lastWasUnk = false;
                    continue;
                }
            }
            if (unkId != null) {
                if (!(fuseUnk && lastWasUnk)) {
                    symbols.add(unkId);
                }
                lastWasUnk = true;
            }
            // No unk token: the Rust library drops the character; so do we.
        }
        return symbols;
    }

    private List<Integer> byteTokens(String character) {
        List<Integer> ids = new ArrayList<>();
        for (byte b : character.getBytes(StandardCharsets.UTF_8)) {
            Integer id = vocab.get(String.format("<0x%02X>", b & 0xff));
            if (id == null) {
                return null;
            }
            ids.add(id);
        }
        return ids;
    }
}
