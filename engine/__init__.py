"""Pure PyTorch inference: tokenizers, generators, sampling, constrained generation.

Kept import-light (torch is imported by the submodules, not here) so that the
torch-free graph layer can use :mod:`.errors`.
"""
