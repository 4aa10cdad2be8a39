"""The runtime: the parts of a running process that join the pipeline to storage (the
checkpoint writer, exactly-once transactions, batch calls made of span calls, care of
failing streams, outages, dependency gates).

It imports `projector.model`, `projector.pipeline`, `projector.storage` and
`projector.errors`; never ops or the CLI.
"""
