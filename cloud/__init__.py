"""Cloud service: round coordinator, schedulers, class-wise aggregation and the model bank."""
