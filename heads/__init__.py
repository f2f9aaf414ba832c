"""Heads trained on embeddings streamed from the store (linear probes, cross-attention); see issue 4."""
