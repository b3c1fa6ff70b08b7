"""A job's life, from admission to its record; the server (backend/server/) only carries it over the wire.

admission.py: whether a job may be queued (settings, model, prompt), for the server and batch alike;
scheduler.py: the queue in front of an executor; executor.py: the ``Executor`` interface, ``JobSpec`` and the
local worker-process executor; worker.py: the worker process; ray_executor.py: the same jobs on Ray actors;
runner.py: one job (prior, trainer, checkpoint, export, timings, record) as the CLI, the worker and the
benchmark run it; finish.py: a job's end (meshes, preview, job.json); results.py: the results folder;
models.py: which priors are on the machine and the worker's loaded one; recovery.py: the jobs a restarted server
takes up again. Nothing here imports backend/server.
"""
