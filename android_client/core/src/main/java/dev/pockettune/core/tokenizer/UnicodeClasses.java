package dev.pockettune.core.tokenizer;

/**
 * The character classes of the GPT-2 pre-tokenization regex, as the Rust {@code tokenizers}
 * library (Oniguruma) evaluates them: {@code \s} is the Unicode White_Space property,
 * {@code \p{L}} the letter categories, {@code \p{N}} the number categories (Nd, Nl, No, which is
 * also Rust's {@code char::is_numeric} used by the Digits pre-tokenizer).
 *
 * <p>Written out rather than left to {@code java.util.regex}: Java's {@code \s} is ASCII-only by
 * default, and Android's regex engine is ICU with different property syntax, so a regex would
 * tokenize differently on the phone than in the JVM tests.
 */
final class UnicodeClasses {
    private UnicodeClasses() {
    }

    static boolean isWhitespace(int cp) {
        return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680
                || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F
                || cp == 0x205F || cp == 0x3000;
    }

    static boolean isLetter(int cp) {
        return Character.isLetter(cp);
    }

    static boolean isNumber(int cp) {
        int type = Character.getType(cp);
        return type == Character.DECIMAL_DIGIT_NUMBER || type == Character.LETTER_NUMBER
                || type == Character.OTHER_NUMBER;
    }

    /** Neither whitespace, letter nor number: the {@code [^\s\p{L}\p{N}]} class. */
    static boolean isOther(int cp) {
        return !isWhitespace(cp) && !isLetter(cp) && !isNumber(cp);
    }
}
