"""Stage: speed. Every artifact under every runtime that reads it, against eager PyTorch in the
same run; the machine's peak; and the recommendation (the fastest artifact that passed)."""
