package dev.pockettune.core.tokenizer;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;

/**
 * The tokenizer's added tokens ({@code <|im_end|>}, {@code <pad>}, ...), which the Rust library
 * finds in the raw text first (leftmost, longest) and never lets BPE split. The text between
 * them is normalized and pre-tokenized as usual. {@code lstrip}/{@code rstrip} absorb adjacent
 * whitespace; {@code single_word} only matches outside words.
 */
final class AddedTokens {
    /** A stretch of text for BPE ({@code id < 0}) or one added token's id. */
    static final class Segment {
        final String text;
        final int id;

        Segment(String text, int id) {
            this.text = text;
            this.id = id;
        }
    }

    private static final class Token {
        final String content;
        final int id;
        final boolean singleWord;
        final boolean lstrip;
        final boolean rstrip;

        Token(String content, int id, boolean singleWord, boolean lstrip, boolean rstrip) {
            this.content = content;
            this.id = id;
            this.singleWord = singleWord;
            this.lstrip = lstrip;
            this.rstrip = rstrip;
        }
    }

    private final List<Token> tokens = new ArrayList<>();

    AddedTokens(JSONArray added, boolean normalizerIsIdentity) {
        if (added != null) {
            for (int i = 0; i < added.length(); i++) {
                JSONObject t = added.optJSONObject(i);
                String content = t.optString("content");
                if (content.isEmpty()) {
                    continue;
                }
                if (t.optBoolean("normalized", false) && !normalizerIsIdentity) {
                    throw new UnsupportedTokenizerException("added token '" + content
                            + "' is matched on normalized text; not supported with a normalizer");
                }
                tokens.add(new Token(content, t.optInt("id"), t.optBoolean("single_word", false),
                        t.optBoolean("lstrip", false), t.optBoolean("rstrip", false)));
            }
        }
        // Longest first, so the first match found at a position is the longest one.
        tokens.sort(Comparator.comparingInt((Token t) -> -t.content.length()));
    }

    Integer idOf(String content) {
        for (Token token : tokens) {
            if (token.content.equals(content)) {
                return token.id;
            }
        }
        return null;
    }

    List<Segment> split(String text) {
        List<Segment> segments = new ArrayList<>();
        int position = 0;
        int searchFrom = 0;
        while (searchFrom <= text.length()) {
            int bestStart = -1;
            Token best = null;
            for (int i = searchFrom; i < text.length() && best == null; i++) {
                for (Token token : tokens) {
                    if (text.startsWith(token.content, i) && wordBoundaryOk(token, text, i)) {
                        best = token;
                        bestStart = i;
                        break;
                    }
                }
            }
            if (best == null) {
                break;
            }
            int start = bestStart;
            int end = bestStart + best.content.length();
            if (best.lstrip) {
                while (start > position && Character.isWhitespace(text.charAt(start - 1))) {
                    start--;
                }
            }
            if (best.rstrip) {
                while (end < text.length() && Character.isWhitespace(text.charAt(end))) {
                    end++;
                }
            }
            if (start > position) {
                segments.add(new Segment(text.substring(position, start), -1));
            }
            segments.add(new Segment(null, best.id));
            position = end;
            searchFrom = end;
        }
        if (position < text.length()) {
            segments.add(new Segment(text.substring(position), -1));
        }
        return segments;
    }

    private static boolean wordBoundaryOk(Token token, String text, int start) {
        if (!token.singleWord) {
            return true;
        }
        int end = start + token.content.length();
        boolean before = start > 0 && isWordChar(text.codePointBefore(start));
        boolean after = end < text.length() && isWordChar(text.codePointAt(end));
        return !before && !after;
    }

    private static boolean isWordChar(int cp) {
        return Character.isLetterOrDigit(cp) || cp == '_';
    }
}
