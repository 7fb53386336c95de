"""The `hyperdomain` command line: parses arguments and calls the library."""
import os

# Large CPU tensors on transparent huge pages: the generator's passes run about 25% faster on
# CPU (benchmarks/README.md), on GPUs it changes nothing. torch reads the variable once, at its
# first allocation, so it is set before torch is imported; a value already set wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
