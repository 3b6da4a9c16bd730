"""Image tokenizers: multi-scale residual VQ (VAR) and single-scale VQ (LlamaGen)."""
