"""mnistlab's Hydra sweepers: `hydra/sweeper=grid` (this template's default) and
`hydra/sweeper=optuna`. Both keep going when a job fails, skip what a re-run has already done,
and end with a summary (summary.csv, summary.md) and a non-zero exit when any job failed."""
