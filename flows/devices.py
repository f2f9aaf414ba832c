"""One Dask worker per GPU: each worker process sees exactly one device.

CUDA numbers the devices a process may use from ``CUDA_VISIBLE_DEVICES``; a worker started with
``CUDA_VISIBLE_DEVICES=2`` sees that GPU as ``cuda:0`` and no other, so the extraction code
(which says ``cuda``) needs no device index and two workers never share a GPU. Each worker owns
the shards it commits, as any writer does (claims are atomic), so the groups of one flow run
spread over the GPUs with no coordination beyond Dask's scheduling.

dask-cuda's ``LocalCUDACluster`` does this where it is installed; otherwise a ``SpecCluster``
of nanny-managed workers, each with its own environment. Scheduler and workers listen on
127.0.0.1 only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (else their indexes);
    empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def per_device_cluster(devices: Sequence[str]) -> Any:
    """A local Dask cluster with one single-threaded worker process per entry of ``devices``,
    started with ``CUDA_VISIBLE_DEVICES`` set to that entry alone."""
    if not devices:
        raise ValueError("per_device_cluster needs at least one device")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        LocalCUDACluster = None
    if LocalCUDACluster is not None and _cuda():
        return LocalCUDACluster(CUDA_VISIBLE_DEVICES=list(devices), threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"device-{d}": {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1", "env": {"CUDA_VISIBLE_DEVICES": str(d)}}}
        for d in devices
    }
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, name="radstore-devices")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
