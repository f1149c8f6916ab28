"""Pictures of datasets and runs, drawn with matplotlib's object API (no pyplot, no display): PNG/GIF bytes out."""
