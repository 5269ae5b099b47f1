"""The worker process: an event loop over peer sockets that fetches, verifies, writes pieces."""
