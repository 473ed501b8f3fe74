"""Dataset stage: takes become fused, canonical per-expression segments (training objects)."""
