"""Prefect flows over atlas_gan: `ingest`, `train-gan` (deployment `satellite`) and `watch-imagery`."""
