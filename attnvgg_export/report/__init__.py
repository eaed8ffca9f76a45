"""report.md and its plots, rendered from the JSON files the stages wrote, and nothing else."""
