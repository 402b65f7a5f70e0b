package dev.pockettune.core.tokenizer;

import java.util.ArrayList;
import java.util.List;

/**
 * The split the ByteLevel pre-tokenizer makes with GPT-2's pattern
 * {@code 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+},
 * written as a scanner that tries the alternatives in the same order with the same backtracking
 * outcome (see {@link UnicodeClasses} for why not a regex).
 *
 * <p>The one subtle alternative is {@code \s+(?!\S)}: a whitespace run followed by a non-space
 * gives back its last character, which then starts the next piece (so " world" keeps its space).
 */
final class Gpt2Splitter {
    private Gpt2Splitter() {
    }

    static List<String> split(String text) {
        int[] cps = text.codePoints().toArray();
        List<String> pieces = new ArrayList<>();
        int i = 0;
        while (i < cps.length) {
            int end = matchAt(cps, i);
            pieces.add(new String(cps, i, end - i));
            i = end;
        }
        return pieces;
    }

    private static int matchAt(int[] cps, int i) {
        int n = cps.length;
        int c = cps[i];
        if (c == '\'' && i + 1 < n) {
            int c1 = cps[i + 1];
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                return i + 2;
            }
            if (i + 2 < n) {
                int c2 = cps[i + 2];
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                    return i + 3;
                }
            }
        }
        // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": the optional prefix is a literal space only.
        int start = (c == ' ' && i + 1 < n) ? i + 1 : i;
        int first = cps[start];
        if (start == i + 1 || c != ' ') {
            if (UnicodeClasses.isLetter(first)) {
                return run(cps, start, Kind.LETTER);
            }
            if (UnicodeClasses.isNumber(first)) {
                return run(cps, start, Kind.NUMBER);
            }
            if (UnicodeClasses.isOther(first)) {
                return run(cps, start, Kind.OTHER);
            }
        }
        // "\s+(?!\S)" then "\s+": c is whitespace here.
        int end = i;
        while (end < n && UnicodeClasses.isWhitespace(cps[end])) {
            end++;
        }
        if (end == n) {
            return end;
        }
        return end - i >= 2 ? end - 1 : i + 1;
    }

    private enum Kind { LETTER, NUMBER, OTHER }

    private static int run(int[] cps, int from, Kind kind) {
        int end = from;
        while (end < cps.length && is(kind, cps[end])) {
            end++;
        }
        return end;
    }

    private static boolean is(Kind kind, int cp) {
        switch (kind) {
            case LETTER:
                return UnicodeClasses.isLetter(cp);
            case NUMBER:
                return UnicodeClasses.isNumber(cp);
            default:
                return UnicodeClasses.isOther(cp);
        }
    }
}
