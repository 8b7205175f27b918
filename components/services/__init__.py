"""The platform services the pipeline steps, the pipelines and the benchmarks use: nothing here is a step.

- ``settings``: the edge's configuration from the environment (one place, clear errors)
- ``mlflow_backend``, ``tracking``, ``summaries``: MLflow connection, runs per pipeline and step, report metrics
- ``registry``, ``logged_model``, ``promotion``: registered model versions, pickle-free logged models, the
  promotion rule (aliases)
- ``storage``, ``sources``, ``artifacts``: s3:// through boto3, where a base model comes from, a step's files
- ``ray_connect``, ``ray_job``: local Ray or a cluster, a search as a Ray job
- ``search_space``, ``tune``, ``search_runs``, ``search_results``: ``idap tune`` on Ray Tune

May import idap and each other (one way, no circles); never a step module of ``components/`` or ``pipelines/``.
"""
