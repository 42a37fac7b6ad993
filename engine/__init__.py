"""The Engine seam and its implementations (vLLM in-process, remote over HTTP)."""
