"""The benchmarks' one home; not part of the product (the package and the .deb ship none).

Side-by-side benchmarks against today's tools are scripts here (`make bench`,
scripts/bench.sh); `bench.util` is what they share (namespaces, child processes,
/proc figures, tables), and `bench.storm` is the boot-storm generator
(`python -m bench.storm`, from the repository's top). docs/benchmarks.md has the figures.
"""
