"""Running a sweep: the sweep loop, the Ray backend, schedulers, the Optuna searcher, the
callbacks, the worker and the study's storage (ARCHITECTURE.md)."""
