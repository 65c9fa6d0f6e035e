"""asv benchmarks for trioq (see ``bench/README.md``)."""
