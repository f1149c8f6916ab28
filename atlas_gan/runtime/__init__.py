"""Runtime pieces shared by training, evaluation, tracking, sampling and export: process groups, checkpoint files,
generator signatures and loading a generator. Nothing here imports a package above it."""
