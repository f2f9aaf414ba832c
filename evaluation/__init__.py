"""Metrics, bootstrap CIs, comparisons and versioned metric artifacts; see issue 5."""
