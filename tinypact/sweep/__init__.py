"""`python -m tinypact.sweep SWEEP.toml --out DIR`: grids of trainings on Ray Tune (docs/sweeps.md).

spec.py      the sweep file -> trials (each: the train CLI's arguments for one (run, seed))
trial.py     one trial: train DIR/<run>-seed<k> by the train CLI's code path; its record
ray_tune.py  the trials as Ray Tune trials (local Ray or a cluster; checkpoints, retries, resume)
report.py    results.json, results.md (mean ± spread per run), results.png
cli.py       the command line
"""
