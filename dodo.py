"""doit entry point.  The task creators live in pipeline/tasks.py (see README)."""

from pipeline.tasks import (  # noqa: F401  (doit finds these by name)
    DOIT_CONFIG, task_bootstrap, task_build, task_kernel, task_package, task_preflight,
    task_publish, task_repro, task_rootfs)
