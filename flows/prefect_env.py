"""Prefect defaults that make a fresh machine work; imported before prefect itself.

The first flow run on a fresh PREFECT_HOME creates its database, which can take longer than
Prefect's default ephemeral-server timeout on a small machine (figures in benchmarks/README.md);
analytics only log errors on an offline machine. A user's own settings always win (setdefault).
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("DO_NOT_TRACK", "1")
