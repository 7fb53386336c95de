"""What the web app adds to a render: the Explore panel's grid through the app's API (Gradio's
queue, PNG encoding, the file hop to the client) against the same render called directly.

For each size, a random-weight generator (port widths, channel multiplier 2; 32 px: the tests'
tiny generator) is served on 127.0.0.1 (no hypernetwork: a random domain file), then, after a
warm-up, --repeats interleaved pairs are timed: ``explore.render`` in process, and
``gradio_client``'s ``/explore`` round trip (the grid read back from disk included). Medians.

    python benchmarks/webapp.py --sizes 32 256 --count 4 --repeats 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI does
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `hyperdomain serve` does (see cli/commands/serve.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from adapt import build_generator  # noqa: E402


def measure(size: int, count: int, repeats: int) -> dict:
    import torch
    from gradio_client import Client

    import hyperdomain as hd
    from hyperdomain.webapp import explore
    from hyperdomain.webapp.models import NONE, AppModels
    from hyperdomain.webapp.server import start

    G = build_generator(size, torch.device("cpu"))
    work = Path(tempfile.mkdtemp(prefix="hd-webapp-bench-"))
    models = AppModels(G=G, work_dir=work)
    g = torch.Generator().manual_seed(0)
    models.add_domain(hd.Domain(0.3 * torch.randn(G.num_domain_params, generator=g), G.domain_dims, {}), "random")
    server = start(models, port=None, block=False)
    client = Client(server.url, verbose=False)
    args = ["random", "", 1.0, NONE, "", 0.5, 0.7, 0, count]
    try:
        explore.render(models, explore.ExploreSettings(*args))
        client.predict(*args, api_name="/explore")
        direct, served = [], []
        for i in range(repeats):
            args[7] = i + 1  # a new seed each time: nothing cached anywhere
            t = time.perf_counter()
            explore.render(models, explore.ExploreSettings(*args))
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            path = client.predict(*args, api_name="/explore")
            Image.open(path).load()
            served.append(time.perf_counter() - t)
    finally:
        server.close()
    d, s = statistics.median(direct), statistics.median(served)
    return {"size": size, "count": count, "direct_s": d, "served_s": s, "overhead_s": s - d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    print("| size | images | render (direct) | through the app | app overhead |")
    print("|---|---|---|---|---|")
    for size in a.sizes:
        r = measure(size, a.count, a.repeats)
        print(f"| {size} px | {r['count']} | {r['direct_s'] * 1000:.0f} ms | {r['served_s'] * 1000:.0f} ms | "
              f"{r['overhead_s'] * 1000:+.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
