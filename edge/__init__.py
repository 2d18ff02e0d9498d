"""Edge gateway service: sample intake, persistent per-class buffer, status, local training, upload."""
