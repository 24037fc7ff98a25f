"""`mmtok serve`: the HTTP front end (OpenAI's Chat Completions API) to the same engine and batching as `mmtok batch`.

A request is validated into an `io.Item` (protocol.py), admitted to a bounded queue and its image loaded off the
event loop (server.py, with safety.py's media policy), gathered with others into forward passes (batcher.py), and
answered as a `chat.completion` or a stream of chunks (app.py), counted in Prometheus metrics (metrics.py).
`ray_serve.py` runs copies of the same app as Ray Serve replicas; options.py holds the flags.
"""
