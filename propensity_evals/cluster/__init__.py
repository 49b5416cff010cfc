"""``make sweep EXECUTOR=slurm``: the sweep as one SLURM job array, and its follow-up targets.

One array task per planned run (model x revision) runs the same ``make <EVAL_TARGET>`` that the
local sweep runs, into the same ``OUTPUT_DIR/<run_name>/``. Submission goes through submitit;
state is read from ``squeue``, submitit's result files and the output folders (never from
``sacct``, which many clusters do not run). Everything about submissions lives in CLUSTER_DIR
(default ``data/cluster``, which must be on a filesystem the compute nodes share)::

    CLUSTER_DIR/last_submission.json     what `make sweep_status` and `make sweep_cancel` act on
    CLUSTER_DIR/submissions/<job>.json   every submission, so that a new one never doubles a
                                         run that is still queued or running
    CLUSTER_DIR/logs/                    submitit's files: <task>_0_log.out, pickles, sbatch script
    CLUSTER_DIR/staging/<task>/          a run being written; moved into OUTPUT_DIR only once
                                         complete, so a killed task never leaves half a run

Modules: ``settings`` (CLUSTER_* variables -> sbatch parameters), ``slurm_commands`` (squeue,
sinfo, scancel), ``record`` (the submission files), ``publish`` (staged run -> output folder),
``job`` (what each array task runs), ``submit``, ``status`` and ``cancel`` (the make targets).
"""
