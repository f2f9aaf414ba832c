"""Heads trained on embeddings streamed from the store: linear probes and the cross-attention head,
their registry, the training objectives of each task kind, the loop and the runs it commits."""
