"""Lightning-aware code: LightningModules, callbacks and schedules (the only Lightning imports)."""
