"""Hyper-parameter search with Optuna: scripts/tune.py, configs/tune.yaml, configs/hparams_search/.

Optuna owns the search: a study in its storage (SQLite in the search's directory by default, or a
PostgreSQL/MySQL database that workers on several machines share), a sampler that proposes each
trial's settings, a pruner that stops hopeless trials after an epoch, and heartbeats by which a
worker that died mid-trial is noticed and its trial retried. fmnist supplies the objective: each
trial is an ordinary training run (fmnist.train) in a run directory of its own, judged on the
validation split (the test split is never read), and continued from its last checkpoint when it
is retried. Modules: `config` (the settings and their rules), `space` (the searched settings),
`study` (storage, sampler, pruner, the study's identity), `trials` (the objective), `summary`
(summary.md/.csv, the best command, the Pareto front), `main` (the command).
"""
