"""The control core: jobs, models and inference with no transport (no gRPC, no MCP).

- ``jobs``: the job service (submit, queue, list, cancel, restart recovery, shutdown); ``job_events``:
  telling readers about changes (wait, watch state and metrics, tail logs);
- ``job_kinds``: what each kind of job is (``TrainingJob``, ``BenchmarkJob``, ``EvaluationJob``: request
  validation, admission, slots, argv, environment, outcome); ``sweeps``: ``SweepJob`` (a Hydra grid or
  the Optuna search as one job) and its results table; ``exits``: what a failed child's exit and log say;
- ``supervisor``: the child processes (spawn, stream output and metrics lines, SIGTERM then SIGKILL);
- ``registry``: the persisted job records, their state machine and queue order; ``job_store``: the same
  registry in SQLite (the sidecar's default, durable across crashes); ``job_view``: the one public view
  of a job (what the servicer puts on the wire and the MCP tools return);
- ``models``: the model repository (checkpoints by job, run or path; the default model);
  ``inference``: the inference service (request defaults and limits, chat messages, the vote unit as a
  policy, dynamic batching via ``batching``); ``streaming``: one agent's continuation streamed as it is
  decoded;
- ``validation``, ``compose``: what a remote request may ask for; ``experiments``, ``runs``: views (runs:
  list, read, plots, and deletion with confirmation); ``settings``: the typed settings; ``errors``: the domain exceptions.

The gRPC servicer (``moe_swarm.serve``) translates messages and maps ``errors`` to status codes.
"""
