package dev.pockettune.core.training;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.device.UpdateCheck;
import dev.pockettune.core.artifact.TensorSpec;
import dev.pockettune.core.testing.Paths2;
import dev.pockettune.core.testing.SafetensorsReader;
import dev.pockettune.core.tokenizer.HfTokenizer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** Safetensors layout, batching by the manifest's rules, and the pre-upload checks. */
public class TrainingFormatTest {
    @Test
    public void safetensorsHeaderAndDataFollowTheFormat() {
        NamedTensor b = new NamedTensor("b.weight", new long[] {2, 2}, new float[] {1f, -2f, 3.5f, 0f});
        NamedTensor a = new NamedTensor("a.weight", new long[] {3}, new float[] {0.25f, 1e-8f, -7f});
        byte[] file = SafetensorsWriter.write(List.of(b, a), Map.of("format", "pt"));
        ByteBuffer buf = ByteBuffer.wrap(file).order(ByteOrder.LITTLE_ENDIAN);
        long headerLength = buf.getLong(0);
        assertEquals(0, headerLength % 8);
        String header = new String(file, 8, (int) headerLength, StandardCharsets.UTF_8);
        assertEquals("{\"__metadata__\":{\"format\":\"pt\"},\"a.weight\":{\"dtype\":\"F32\",\"shape\":[3],"
                + "\"data_offsets\":[0,12]},\"b.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[12,28]}}",
                header.trim());
        assertEquals(8 + headerLength + 28, file.length);
        Map<String, NamedTensor> back = SafetensorsReader.read(file);
        assertArrayEquals(a.data, back.get("a.weight").data, 0f);
        assertArrayEquals(b.data, back.get("b.weight").data, 0f);
        assertEquals(-2f, buf.getFloat((int) (8 + headerLength + 12 + 4)), 0f);
    }

    @Test
    public void examplesArePaddedRightWithLabelsOnRealTokensOnly() throws Exception {
        HfTokenizer tokenizer = HfTokenizer.load(Paths2.resource("tiny_artifact/tokenizer/tokenizer.json").getParent());
        TextBatcher batcher = new TextBatcher(tokenizer, false, 0, -100, 2, 8);
        List<TextBatcher.Example> examples = batcher.examples(List.of("Hi there\n\n\n  ab  \r\n\r\nonly"));
        // paragraphs: "Hi there" (8 bytes: one full window), "ab", "only"
        assertEquals(3, examples.size());
        assertArrayEquals(new long[] {75, 108, 35, 119, 107, 104, 117, 104}, examples.get(0).ids);
        assertArrayEquals(examples.get(0).ids, examples.get(0).labels);
        assertArrayEquals(new long[] {100, 101, 0, 0, 0, 0, 0, 0}, examples.get(1).ids);
        assertArrayEquals(new long[] {100, 101, -100, -100, -100, -100, -100, -100}, examples.get(1).labels);
        List<TrainingBatch> batches = batcher.batches(examples);
        assertEquals(1, batches.size());   // the third example is a short tail
        assertEquals(16, batches.get(0).ids.length);
    }

    @Test
    public void longParagraphsBecomeConsecutiveWindows() throws Exception {
        HfTokenizer tokenizer = HfTokenizer.load(Paths2.resource("tiny_artifact/tokenizer/tokenizer.json").getParent());
        TextBatcher batcher = new TextBatcher(tokenizer, false, 0, -100, 1, 4);
        List<TextBatcher.Example> examples = batcher.examples(List.of("abcdefghij"));
        assertEquals(3, examples.size());
        assertEquals(4, examples.get(0).realTokens);
        assertEquals(2, examples.get(2).realTokens);   // "ij"
    }

    @Test
    public void labelledPositionsAreCountedAsThePythonTrainersCountThem() throws Exception {
        // Row 0: labels everywhere (position 0 predicts nothing: 3 of 4); row 1: one label at 2.
        TrainingBatch batch = new TrainingBatch(2, 4, new long[8],
                new long[] {5, 6, 7, 8, -100, -100, 9, -100});
        assertArrayEquals(new int[] {3, 1}, batch.labelledPositionsPerRow(-100));
        LossPositions.check(List.of(batch), null, -100);   // the full head takes anything
        LossPositions.check(List.of(batch), 3, -100);
        try {
            LossPositions.check(List.of(batch, batch), 2, -100);
            fail("a row with 3 labels must be refused by a K=2 program");
        } catch (TrainingException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().startsWith(
                    "batch 0 row 0 has 3 labelled positions, but this program computes the loss at only the first 2"));
        }
    }

    @Test
    public void roundsTakeConsecutiveBatchesFromAMovingOffset() {
        List<TrainingBatch> batches = new java.util.ArrayList<>();
        for (int i = 0; i < 5; i++) {
            batches.add(new TrainingBatch(1, 2, new long[] {i, i}, new long[] {i, i}));
        }
        List<TrainingBatch> round2 = TextBatcher.forRound(batches, 2, 3);
        assertEquals(List.of(1L, 2L, 3L), round2.stream().map(b -> b.ids[0]).toList());   // offset 6 % 5
    }

    @Test
    public void updatesAreCheckedLikeTheCoordinatorDoes() {
        List<TensorSpec> specs = List.of(new TensorSpec("x", new long[] {2}, "float32"));
        NamedTensor good = new NamedTensor("x", new long[] {2}, new float[] {3f, 4f});
        NamedTensor start = new NamedTensor("x", new long[] {2}, new float[] {0f, 0f});
        assertEquals(5.0, UpdateCheck.deltaNorm(UpdateCheck.againstManifest(List.of(good), specs), List.of(start)), 1e-12);
        for (NamedTensor bad : new NamedTensor[] {
                new NamedTensor("x", new long[] {1, 2}, new float[] {1f, 2f}),
                new NamedTensor("x", new long[] {2}, new float[] {Float.NaN, 0f}),
                new NamedTensor("y", new long[] {2}, new float[] {1f, 2f})}) {
            try {
                UpdateCheck.againstManifest(List.of(bad), specs);
                fail("must refuse " + bad + " " + Arrays.toString(bad.data));
            } catch (IllegalStateException expected) {
                assertTrue(expected.getMessage().length() > 0);
            }
        }
        assertEquals(Collections.emptyList(), UpdateCheck.againstManifest(List.of(), List.of()));
    }
}
