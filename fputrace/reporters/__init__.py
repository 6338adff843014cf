"""The outputs: one module per kind of output (memray's reporters), each
rendering what the analyzers computed and nothing else."""
