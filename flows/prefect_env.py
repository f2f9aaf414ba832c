"""Prefect defaults that make a fresh machine work; imported before prefect itself.

The first flow run on a fresh PREFECT_HOME creates its database, which can take longer than
Prefect's default ephemeral-server timeout on a small machine (figures in benchmarks/README.md);
analytics only log errors on an offline machine. A user's own settings always win (setdefault).
"""

import logging
import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("DO_NOT_TRACK", "1")


class _UserErrorsInOneLine(logging.Filter):
    """Drop the traceback from Prefect's log record of a run that failed on a RadstoreError.

    Those errors name the culprit and what to do in their message (bad labels, a full disk);
    the engine's traceback would bury that line under seventy of Prefect's own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from featurestore.errors import RadstoreError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RadstoreError):
            record.exc_info = None
            record.exc_text = None
        return True


for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_UserErrorsInOneLine())
