"""What a model costs and how well it does: parameters, MACs, accuracy, measured latency (PyTorch and ONNX
Runtime), and the language-model task's token measures.

Holds ``metrics`` (counts, accuracy, devices), ``speed`` (latency) and ``tokens`` (token loss, perplexity).
The bottom of the house: it imports nothing from idap but :mod:`idap.atomic`.
"""
