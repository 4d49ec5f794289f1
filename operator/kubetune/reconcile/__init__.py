"""Per kind: the reconcile (a decision and the shell that reads and writes), the client, the work queue."""
