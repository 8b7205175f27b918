"""Where the dense model comes from: trained here (``baseline``), imported from a user's own code and
weights (``importing``), or a Hugging Face text model (``text_models``). May import everything below it
(measure, models, data, bundle, prune, report); never a command line.
"""
