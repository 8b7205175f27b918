"""The method: IDAP++ flow-divergence scores and the two pruning stages, with recovery, as a library.

Holds ``activations`` (hooks), ``divergence`` (information-flow scores), ``importance`` (the criterion
registry: flow and the Torch-Pruning baselines), ``schedule``, ``surgery`` (the only code that mutates a
model), ``filter_stage`` (stage 1), ``layer_stage`` (stage 2), ``recovery`` (distillation and training),
``config`` (the recipe), ``state`` (run state and context), ``checkpoint`` (resumable runs) and ``compress``
(both stages and the final fine-tune). May import :mod:`idap.measure`, :mod:`idap.models`,
:mod:`idap.bundle` and the shared types of :mod:`idap.data` (``idap.data.splits``); never a data loader,
a report or a command line.
"""
