"""The generation engine: tokens, sampling, batching. Knows nothing of HTTP or accounts."""
