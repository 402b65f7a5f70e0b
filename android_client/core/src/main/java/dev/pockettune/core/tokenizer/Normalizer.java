package dev.pockettune.core.tokenizer;

import java.text.Normalizer.Form;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * The tokenizer.json {@code normalizer}: null for SmolLM2 and the tiny test model; the Unicode
 * normal forms, Lowercase and Sequence are supported, anything else is refused.
 */
abstract class Normalizer {
    abstract String apply(String text);

    boolean isIdentity() {
        return false;
    }

    static Normalizer fromJson(Object spec) {
        if (spec == null || spec == JSONObject.NULL) {
            return new Normalizer() {
                @Override
                String apply(String text) {
                    return text;
                }

                @Override
                boolean isIdentity() {
                    return true;
                }
            };
        }
        JSONObject object = (JSONObject) spec;
        String type = object.optString("type");
        switch (type) {
            case "NFC":
                return unicode(Form.NFC);
            case "NFD":
                return unicode(Form.NFD);
            case "NFKC":
                return unicode(Form.NFKC);
            case "NFKD":
                return unicode(Form.NFKD);
            case "Lowercase":
                return new Normalizer() {
                    @Override
                    String apply(String text) {
                        return text.toLowerCase(Locale.ROOT);
                    }
                };
            case "Sequence": {
                JSONArray items = object.optJSONArray("normalizers");
                if (items == null) {
                    throw new UnsupportedTokenizerException("Sequence normalizer without 'normalizers'");
                }
                List<Normalizer> steps = new ArrayList<>();
                for (int i = 0; i < items.length(); i++) {
                    steps.add(fromJson(items.opt(i)));
                }
                return new Normalizer() {
                    @Override
                    String apply(String text) {
                        String current = text;
                        for (Normalizer step : steps) {
                            current = step.apply(current);
                        }
                        return current;
                    }
                };
            }
            default:
                throw new UnsupportedTokenizerException("normalizer '" + type + "' is not supported on the phone");
        }
    }

    private static Normalizer unicode(Form form) {
        return new Normalizer() {
            @Override
            String apply(String text) {
                return java.text.Normalizer.normalize(text, form);
            }
        };
    }
}
