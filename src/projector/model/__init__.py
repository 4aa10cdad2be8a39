"""The model: what users write and the values every layer shares (events and stream names,
projections and their results, retry policies, dependencies).

No I/O: it imports only the standard library, small pure helpers (orjson) and
`projector.errors`. Every other package may import it; it imports none of them.
"""
