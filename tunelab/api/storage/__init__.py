"""`/v1/storage`: what the service holds and the disk it takes (tunelab's own route)."""
