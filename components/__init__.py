"""The Kubeflow Pipelines v2 components, one containerized step per module (``prepare_data``,
``train_baseline``, ``score_divergence``, ``prune_filters``, ``prune_layers``, ``finetune``, ``evaluate``,
``search_compression``, ``register_model``, ``mlflow_model``), and the platform services they call
(:mod:`components.services`).
"""
