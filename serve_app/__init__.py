"""Speech recognition served on Ray Serve."""
