"""The blob layer and the cache: Ollama's layout on disk, partial blobs, fetching, reading, eviction."""
