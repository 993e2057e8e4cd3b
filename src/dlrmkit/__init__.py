"""dlrmkit: DLRM click-through-rate models, from Criteo logs to MLPerf-style results.

The tree reads as the pipeline: ``data`` (schema, dataset format, loader, synthetic data) ->
``model`` (DLRM, tensors in, logits out) -> ``checkpoint`` -> ``train`` (loop, optimizers,
schedule, metrics) -> ``cli``.
"""

__version__ = "0.1.0"
