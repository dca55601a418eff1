"""Image reading, datasets and synthetic data."""
