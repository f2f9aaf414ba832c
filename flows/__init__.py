"""Prefect flows and the ``radstore`` CLI: thin orchestration over featurestore/heads/evaluation."""
