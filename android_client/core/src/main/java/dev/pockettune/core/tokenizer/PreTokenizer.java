package dev.pockettune.core.tokenizer;

import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Splits text into the pieces BPE encodes separately: the {@code pre_tokenizer} of a
 * tokenizer.json. Supported: {@code ByteLevel} (with or without the GPT-2 split, with or without a
 * prefix space), {@code Digits} (SmolLM2's original tokenizer splits every digit) and
 * {@code Sequence} of those. Anything else is refused.
 */
abstract class PreTokenizer {
    abstract List<String> apply(List<String> pieces);

    static PreTokenizer fromJson(Object spec) {
        if (spec == null || spec == JSONObject.NULL) {
            return new Identity();
        }
        JSONObject object = (JSONObject) spec;
        String type = object.optString("type");
        switch (type) {
            case "ByteLevel":
                return new ByteLevel(object.optBoolean("add_prefix_space", false), object.optBoolean("use_regex", true));
            case "Digits":
                return new Digits(object.optBoolean("individual_digits", false));
            case "Sequence": {
                JSONArray items = object.optJSONArray("pretokenizers");
                if (items == null) {
                    throw new UnsupportedTokenizerException("Sequence pre-tokenizer without 'pretokenizers'");
                }
                List<PreTokenizer> steps = new ArrayList<>();
                for (int i = 0; i < items.length(); i++) {
                    steps.add(fromJson(items.opt(i)));
                }
                return new Sequence(steps);
            }
            default:
                throw new UnsupportedTokenizerException("pre-tokenizer '" + type + "' is not supported on the phone");
        }
    }

    /** True when this pre-tokenizer maps bytes to the ByteLevel alphabet (the vocabulary's form). */
    boolean mapsBytes() {
        return false;
    }

    static final class Identity extends PreTokenizer {
        @Override
        List<String> apply(List<String> pieces) {
            return pieces;
        }
    }

    static final class ByteLevel extends PreTokenizer {
        private final boolean addPrefixSpace;
        private final boolean useRegex;

        ByteLevel(boolean addPrefixSpace, boolean useRegex) {
            this.addPrefixSpace = addPrefixSpace;
            this.useRegex = useRegex;
        }

        @Override
        List<String> apply(List<String> pieces) {
            List<String> out = new ArrayList<>();
            for (String piece : pieces) {
                String text = piece;
                if (addPrefixSpace && !text.startsWith(" ")) {
                    text = " " + text;
                }
                List<String> split = useRegex ? Gpt2Splitter.split(text) : java.util.Collections.singletonList(text);
                for (String part : split) {
                    if (!part.isEmpty()) {
                        out.add(ByteLevelAlphabet.encode(part));
                    }
                }
            }
            return out;
        }

        @Override
        boolean mapsBytes() {
            return true;
        }
    }

    /** Isolates numbers: every digit alone, or each run of digits ({@code individual_digits}). */
    static final class Digits extends PreTokenizer {
        private final boolean individual;

        Digits(boolean individual) {
            this.individual = individual;
        }

        @Override
        List<String> apply(List<String> pieces) {
            List<String> out = new ArrayList<>();
            for (String piece : pieces) {
                int[] cps = piece.codePoints().toArray();
                int start = 0;
                while (start < cps.length) {
                    int end = start + 1;
                    boolean numeric = UnicodeClasses.isNumber(cps[start]);
                    if (!numeric || !individual) {
                        while (end < cps.length && UnicodeClasses.isNumber(cps[end]) == numeric) {
                            end++;
                        }
                    }
                    out.add(new String(cps, start, end - start));
                    start = end;
                }
            }
            return out;
        }
    }

    static final class Sequence extends PreTokenizer {
        private final List<PreTokenizer> steps;

        Sequence(List<PreTokenizer> steps) {
            this.steps = steps;
        }

        @Override
        List<String> apply(List<String> pieces) {
            List<String> current = pieces;
            for (PreTokenizer step : steps) {
                current = step.apply(current);
            }
            return current;
        }

        @Override
        boolean mapsBytes() {
            for (PreTokenizer step : steps) {
                if (step.mapsBytes()) {
                    return true;
                }
            }
            return false;
        }
    }
}
