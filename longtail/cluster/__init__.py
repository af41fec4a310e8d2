"""Beyond one process: sweeps (configs / pipelines x seeds x overrides) as graphs of jobs, run as local processes or
as SLURM jobs through submitit, with their status and the sweep's one results table."""
