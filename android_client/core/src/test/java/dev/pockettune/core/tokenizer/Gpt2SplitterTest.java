package dev.pockettune.core.tokenizer;

import static org.junit.Assert.assertEquals;

import java.util.List;
import org.junit.Test;

/** The GPT-2 split's alternatives, including the whitespace look-ahead that gives back one space. */
public class Gpt2SplitterTest {
    @Test
    public void wordsKeepTheirLeadingSpace() {
        assertEquals(List.of("Hello", ",", " world", "!"), Gpt2Splitter.split("Hello, world!"));
    }

    @Test
    public void contractionsSplitOff() {
        assertEquals(List.of("It", "'s", " we", "'ll", " they", "'re", " I", "'m"),
                Gpt2Splitter.split("It's we'll they're I'm"));
        assertEquals(List.of("IT", "'", "S"), Gpt2Splitter.split("IT'S"));   // upper case is not a contraction
    }

    @Test
    public void whitespaceRunsGiveTheirLastSpaceToTheNextWord() {
        assertEquals(List.of("a", "   ", " b"), Gpt2Splitter.split("a    b"));
        assertEquals(List.of("a", "\n", "\n", "b"), Gpt2Splitter.split("a\n\nb"));
        assertEquals(List.of("a", "\n", "b"), Gpt2Splitter.split("a\nb"));
        assertEquals(List.of("end", "   "), Gpt2Splitter.split("end   "));
        assertEquals(List.of("x", "\t", " y"), Gpt2Splitter.split("x\t y"));
    }

    @Test
    public void numbersAndSymbolsAreSeparateRuns() {
        assertEquals(List.of("abc", "123", " 45", ".", "6", " $%&"), Gpt2Splitter.split("abc123 45.6 $%&"));
    }

    @Test
    public void nonAsciiLettersAndEmojiFollowTheUnicodeClasses() {
        assertEquals(List.of("café", " naïve", " 😀!"), Gpt2Splitter.split("café naïve 😀!"));
        assertEquals(List.of("日本語", "\u00a0", "x"), Gpt2Splitter.split("日本語\u00a0x"));
    }
}
