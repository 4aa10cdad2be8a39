"""Telemetry: what watches a run and tells operators how it goes (health verdicts, metrics,
lag, the summary line, progress, tracing, logs).

It imports the model, the pipeline, storage and the runtime, and `projector.settings`; only
the runner and the CLI import it. Nothing here renders with rich: bars are the CLI's.
"""
