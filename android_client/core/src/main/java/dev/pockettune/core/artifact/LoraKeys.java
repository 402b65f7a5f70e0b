package dev.pockettune.core.artifact;

/**
 * LoRA tensor names in the two spellings PocketTune uses (export/executorch.py):
 * the PEFT adapter-file key that manifests and uploads use
 * ({@code base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight}) and the key inside the
 * training program and its {@code .ptd}, which the runtime reports from {@code namedParameters}
 * ({@code model.base_model.model.model.layers.2.self_attn.q_proj.lora_A.default.weight}).
 */
public final class LoraKeys {
    static final String WRAPPER = "model";
    static final String ADAPTER = "default";

    private LoraKeys() {
    }

    /** PEFT key -> program key. */
    public static String programKey(String peftKey) {
        int dot = peftKey.lastIndexOf('.');
        if (dot <= 0) {
            throw new IllegalArgumentException("'" + peftKey + "' is not a PEFT LoRA key");
        }
        return WRAPPER + "." + peftKey.substring(0, dot) + "." + ADAPTER + peftKey.substring(dot);
    }

    /** Program key -> PEFT key; the inverse of {@link #programKey}. */
    public static String peftKey(String programKey) {
        String prefix = WRAPPER + ".";
        String marker = "." + ADAPTER + ".";
        int dot = programKey.lastIndexOf('.');
        if (!programKey.startsWith(prefix) || dot <= 0
                || !programKey.substring(0, dot + 1).endsWith(marker)) {
            throw new IllegalArgumentException("'" + programKey + "' is not a LoRA tensor of a PocketTune program");
        }
        String head = programKey.substring(prefix.length(), dot - ADAPTER.length() - 1);
        return head + programKey.substring(dot);
    }
}
