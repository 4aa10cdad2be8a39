"""Entry point of a measuring child process: ``python -m bench.child '<job as JSON>'``.

Prints the job's figures as one JSON line on stdout (and nothing else there).
"""

from __future__ import annotations

import json
import sys

from bench.jobs import Job, run


def main() -> None:
    job = Job(**json.loads(sys.argv[1]))
    print(json.dumps(run(job)), flush=True)


if __name__ == "__main__":
    main()
