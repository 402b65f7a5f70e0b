package dev.pockettune.core.tokenizer;

import java.nio.charset.StandardCharsets;

/**
 * GPT-2's reversible byte -> printable character table (the one ByteLevel uses): printable
 * Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards, in byte order.
 * A piece's UTF-8 bytes become a string of these characters before BPE sees it.
 */
final class ByteLevelAlphabet {
    private static final char[] BYTE_TO_CHAR = build();

    private ByteLevelAlphabet() {
    }

    private static char[] build() {
        char[] table = new char[256];
        int extra = 0;
        for (int b = 0; b < 256; b++) {
            boolean printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char) b : (char) (256 + extra++);
        }
        return table;
    }

    static String encode(String piece) {
        byte[] bytes = piece.getBytes(StandardCharsets.UTF_8);
        char[] out = new char[bytes.length];
        for (int i = 0; i < bytes.length; i++) {
            out[i] = BYTE_TO_CHAR[bytes[i] & 0xff];
        }
        return new String(out);
    }
}
