"""The main process: the coordinator that owns the truth, the worker supervision, the seeder."""
