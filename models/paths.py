"""Default locations the CLI verbs and the demo share."""

DEFAULT_RUN = "runs/demo"  # the demo's run folder: its data, checkpoints, cache and model repository
