"""projector's benchmarks: ``python -m bench catchup|upsert|tail|group|all``.

Each run creates its own database (on ``PROJECTOR_BENCH_DATABASE_URL``, else on a local cluster
it starts), seeds it once with a bulk load, and measures every scenario against a baseline in
the same run. See `bench.scenarios` for what is compared with what, and `bench.jobs` for how.
"""
