package dev.pockettune.core.training;

import dev.pockettune.core.tokenizer.HfTokenizer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The user's own text -> the fixed-shape batches the program was compiled for, by the manifest's
 * rules (the same as {@code models/batching.py} on the Python side): ids without special tokens
 * unless the manifest says otherwise, right padding with {@code pad_token_id}, labels equal to the
 * ids on real tokens and {@code ignore_index} (-100) on padding, so padding adds nothing to the loss.
 *
 * <p>Each paragraph (text between blank lines) is one example, as one article is one example in
 * Python; a paragraph longer than {@code seq} tokens becomes consecutive windows of {@code seq}
 * tokens instead of being cut, since on a phone every sentence of the user's text is worth
 * learning from. Examples are grouped into full batches; a short tail is dropped (as Python does).
 */
public final class TextBatcher {
    private final HfTokenizer tokenizer;
    private final boolean addSpecialTokens;
    private final long padId;
    private final long ignoreIndex;
    private final int batch;
    private final int seq;

    public TextBatcher(HfTokenizer tokenizer, boolean addSpecialTokens, long padId, long ignoreIndex,
                       int batch, int seq) {
        if (batch <= 0 || seq <= 1) {
            throw new IllegalArgumentException("batch must be >= 1 and seq >= 2");
        }
        this.tokenizer = tokenizer;
        this.addSpecialTokens = addSpecialTokens;
        this.padId = padId;
        this.ignoreIndex = ignoreIndex;
        this.batch = batch;
        this.seq = seq;
    }

    /** Paragraphs of every document, trimmed, empty ones dropped. */
    public static List<String> paragraphs(List<String> documents) {
        List<String> out = new ArrayList<>();
        for (String document : documents) {
            for (String paragraph : document.replace("\r\n", "\n").split("\n[ \t]*\n")) {
                String trimmed = paragraph.trim();
                if (!trimmed.isEmpty()) {
                    out.add(trimmed);
                }
            }
        }
        return out;
    }

    /** One example: ids and labels of length {@code seq}. */
    public static final class Example {
        public final long[] ids;
        public final long[] labels;
        public final int realTokens;

        Example(long[] ids, long[] labels, int realTokens) {
            this.ids = ids;
            this.labels = labels;
            this.realTokens = realTokens;
        }
    }

    public List<Example> examples(List<String> documents) {
        List<Example> examples = new ArrayList<>();
        for (String paragraph : paragraphs(documents)) {
            List<Integer> tokens = tokenizer.encode(paragraph, addSpecialTokens);
            for (int start = 0; start < tokens.size(); start += seq) {
                int end = Math.min(tokens.size(), start + seq);
                if (end - start < 2) {
                    continue;   // one token predicts nothing: no next token to learn
                }
                examples.add(example(tokens.subList(start, end)));
            }
        }
        return examples;
    }

    /** {@code models.batching.encode_example}: pad right, label real tokens only. */
    Example example(List<Integer> tokens) {
        long[] ids = new long[seq];
        long[] labels = new long[seq];
        Arrays.fill(ids, padId);
        Arrays.fill(labels, ignoreIndex);
        for (int i = 0; i < tokens.size(); i++) {
            ids[i] = tokens.get(i);
            labels[i] = tokens.get(i);
        }
        return new Example(ids, labels, tokens.size());
    }

    /** Consecutive examples grouped into full batches; a short tail is dropped. */
    public List<TrainingBatch> batches(List<Example> examples) {
        List<TrainingBatch> batches = new ArrayList<>();
        for (int first = 0; first + batch <= examples.size(); first += batch) {
            long[] ids = new long[batch * seq];
            long[] labels = new long[batch * seq];
            for (int row = 0; row < batch; row++) {
                Example example = examples.get(first + row);
                System.arraycopy(example.ids, 0, ids, row * seq, seq);
                System.arraycopy(example.labels, 0, labels, row * seq, seq);
            }
            batches.add(new TrainingBatch(batch, seq, ids, labels));
        }
        return batches;
    }

    /**
     * The batch for each of a round's {@code steps}: consecutive batches from an offset that moves
     * with the round (so rounds see different text), wrapping around a small local dataset.
     */
    public static List<TrainingBatch> forRound(List<TrainingBatch> batches, long round, int steps) {
        if (batches.isEmpty()) {
            throw new IllegalArgumentException("no batches to train on");
        }
        List<TrainingBatch> chosen = new ArrayList<>(steps);
        long offset = Math.floorMod(round * (long) steps, (long) batches.size());
        for (int step = 0; step < steps; step++) {
            chosen.add(batches.get((int) ((offset + step) % batches.size())));
        }
        return chosen;
    }
}
