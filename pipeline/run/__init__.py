"""Execution: the extraction driver, the worker that runs a stage on a task, the executors (in process,
Dask), the dry run's estimate, fault points and progress."""
