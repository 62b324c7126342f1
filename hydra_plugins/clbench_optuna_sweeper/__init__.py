"""cl_bench's Optuna sweeper as a Hydra plugin (``hydra/sweeper=optuna``; cl_bench.search)."""
