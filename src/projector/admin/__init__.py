"""Administration: what operators and applications ask of groups (status, lag, checkpoint
administration, failing streams, rebuilds, read-your-writes).

It imports the model, storage and the runtime; only the CLI and the package's public API
import it, never the runner. Nothing here renders with rich: tables are the CLI's.
"""
