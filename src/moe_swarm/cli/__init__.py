"""The console scripts' thin entry points: compose the config, instantiate, run; user errors as one line."""
