"""The sweep: Optuna study and storage, our Ray Tune searcher, launch/resume/status."""
