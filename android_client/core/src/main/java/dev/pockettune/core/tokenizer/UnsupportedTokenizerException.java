package dev.pockettune.core.tokenizer;

/**
 * The tokenizer.json uses a component this implementation does not reproduce exactly. Refusing is
 * the point: a phone that tokenized differently from the exporter would train on ids the model
 * never saw in that form, silently.
 */
public class UnsupportedTokenizerException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public UnsupportedTokenizerException(String message) {
        super(message);
    }
}
