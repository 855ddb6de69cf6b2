"""The registry client: the HTTP API, blob bodies, auth, configuration, stream slots, retries."""
