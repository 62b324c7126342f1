"""cl_bench: a Hydra-configured continual-learning experiment runner.

Run a task stream through a strategy on a backbone and get an honest accuracy matrix
R[i][j] (performance on task j after training task i) with BWT, FWT and forgetting.
"""

__version__ = "0.1.0"
