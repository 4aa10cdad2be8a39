"""Operations: what operators and applications ask of groups (status, lag, checkpoint
administration, read-your-writes) and what watches a run (health, metrics, the summary line,
progress, tracing, logs).

It imports the model, the pipeline, storage and the runtime, and `projector.settings`; never
the runner or the CLI. Nothing here renders with rich: tables and bars are the CLI's.
"""
