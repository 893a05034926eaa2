"""Which heads do in-context learning: attribution patching of every head, induction and
prefix-matching scores, and mean ablation with exclusion (Yin & Steinhardt 2025)."""
