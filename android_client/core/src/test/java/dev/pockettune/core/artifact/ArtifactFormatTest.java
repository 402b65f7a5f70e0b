package dev.pockettune.core.artifact;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.pockettune.core.json.Json;
import dev.pockettune.core.json.ProtocolFormatException;
import dev.pockettune.core.testing.Paths2;
import dev.pockettune.core.testing.SafetensorsReader;
import dev.pockettune.core.training.NamedTensor;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.Map;
import org.json.JSONObject;
import org.junit.Test;

/**
 * The artifact files a phone reads, on a real tiny export (src/test/resources/tiny_artifact: the
 * exporter's own output for tests/conftest.py's tiny tier).
 */
public class ArtifactFormatTest {
    private static final Path ARTIFACT = Paths2.resource("tiny_artifact/manifest.json").getParent();

    @Test
    public void ptdTensorsEqualTheInitialAdapterTheExporterWroteAsSafetensors() throws Exception {
        List<NamedTensor> ptd = PtdReader.read(ARTIFACT.resolve("lora.ptd"));
        Map<String, NamedTensor> peft = SafetensorsReader.read(
                Files.readAllBytes(ARTIFACT.resolve("initial_adapter_model.safetensors")));
        assertEquals(peft.size(), ptd.size());
        for (NamedTensor tensor : ptd) {
            NamedTensor expected = peft.get(LoraKeys.peftKey(tensor.name));
            assertArrayEquals(tensor.name, expected.shape, tensor.shape);
            assertArrayEquals(tensor.name, expected.data, tensor.data, 0f);
        }
    }

    @Test
    public void aTruncatedPtdIsRefusedNotMisread() throws Exception {
        byte[] data = Files.readAllBytes(ARTIFACT.resolve("lora.ptd"));
        try {
            PtdReader.read(java.util.Arrays.copyOf(data, 600), "truncated.ptd");
            fail("a truncated file must not parse");
        } catch (IOException expected) {
            assertTrue(expected.getMessage(), expected.getMessage().contains("truncated.ptd"));
        }
    }

    @Test
    public void manifestGivesWhatThePhoneNeeds() throws Exception {
        Manifest manifest = Manifest.parse(Json.parseObject(Files.readAllBytes(ARTIFACT.resolve("manifest.json")), "m"));
        assertEquals(2, manifest.batch);
        assertEquals(32, manifest.seq);
        assertEquals("model.pte", manifest.programFile);
        assertEquals("forward", manifest.programMethod);
        assertEquals("lora.ptd", manifest.trainableDataFile);
        assertEquals(-100, manifest.ignoreIndex);
        assertNull(manifest.prefixFile);
        assertEquals("tokenizer", manifest.tokenizer.dir);
        assertEquals(0, manifest.tokenizer.padTokenId);
        assertEquals(8, manifest.loraTensors.size());
        assertArrayEquals(new long[] {4, 64}, manifest.loraTensors.get(0).shape);
        List<String> device = manifest.deviceFiles().stream().map(f -> f.path).toList();
        assertEquals(List.of("lora.ptd", "model.pte", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"),
                device);
    }

    @Test
    public void theLabelPositionHeadIsReadFromTheProgramSection() throws Exception {
        JSONObject raw = Json.parseObject(Files.readAllBytes(ARTIFACT.resolve("manifest.json")), "m");
        assertNull("a manifest from before the field: the full head", Manifest.parse(raw).lossPositions);
        raw.getJSONObject("program").put("loss_positions", JSONObject.NULL);
        assertNull(Manifest.parse(raw).lossPositions);
        raw.getJSONObject("program").put("loss_positions", 14);
        assertEquals(Integer.valueOf(14), Manifest.parse(raw).lossPositions);
        for (Object bad : new Object[] {0, 32, "14", 1.5}) {
            raw.getJSONObject("program").put("loss_positions", bad);
            try {
                Manifest.parse(raw);
                fail("loss_positions " + bad + " must be refused for seq 32");
            } catch (ProtocolFormatException expected) {
                assertTrue(expected.getMessage(), expected.getMessage().contains("loss_positions"));
            }
        }
    }

    @Test
    public void anUnknownManifestVersionIsRefused() throws Exception {
        JSONObject raw = Json.parseObject(Files.readAllBytes(ARTIFACT.resolve("manifest.json")), "m");
        raw.put("schema_version", 2);
        try {
            Manifest.parse(raw);
            fail("version 2 is unknown");
        } catch (ProtocolFormatException expected) {
            assertTrue(expected.getMessage().contains("schema version 2"));
        }
    }

    @Test
    public void loraKeysConvertBothWays() {
        String peft = "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight";
        String program = "model.base_model.model.model.layers.2.self_attn.q_proj.lora_A.default.weight";
        assertEquals(program, LoraKeys.programKey(peft));
        assertEquals(peft, LoraKeys.peftKey(program));
        try {
            LoraKeys.peftKey("model.base_model.model.lm_head.weight");
            fail("not a LoRA key");
        } catch (IllegalArgumentException expected) {
            // a frozen weight must never be uploaded as a LoRA tensor
        }
    }

    @Test
    public void pathsFromTheNetworkCannotEscapeTheArtifactDirectory() {
        Path root = Paths.get("/data/artifacts/abc");
        assertEquals(root.resolve("tokenizer/tokenizer.json"), ArtifactStore.safeResolve(root, "tokenizer/tokenizer.json"));
        for (String bad : new String[] {"../x", "/etc/passwd", "a/../../x", "a//b", "a\\b", ""}) {
            try {
                ArtifactStore.safeResolve(root, bad);
                fail("'" + bad + "' must be refused");
            } catch (IllegalArgumentException expected) {
                // refused
            }
        }
    }
}
