"""Side-by-side benchmarks of losskit against peer libraries (see README.md in this folder)."""
