"""Metrics, bootstrap CIs, comparisons, versioned metric artifacts, SQL views and the report."""
