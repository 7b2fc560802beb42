"""The Lightning wing: the run template (Run + objectives), LightningModules, DataModules, callbacks,
the Trainer builder and resume. Lightning is imported here and in scale/'s strategy and fault pieces."""
