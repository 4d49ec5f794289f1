"""kubetune's trainer: runs a FineTuneJob's training inside the trainer image (or locally)."""
