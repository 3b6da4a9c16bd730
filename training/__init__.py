"""Training of the bundled emoji model (data set, tokenizer, generator, evaluation)."""
