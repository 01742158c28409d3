"""scikit-learn's KMeans on a raw little-endian f32 matrix, for comparisons with the
`kmeans` stage (host/sitsflow/benches/kmeans.rs, tests/kmeans.rs).

    python3 sklearn_kmeans.py DATA.f32 --features 10 --k 8 --n-init 3 --max-iter 300 \
        --tol 1e-4 --seed 0 --algorithm lloyd --repeats 3

Prints one JSON object: the fit's wall-clock seconds per repeat (only `fit`, timed
with time.perf_counter), iterations, inertia, and the library versions and thread
counts it ran with. Data is float32, as the stage sees it; scikit-learn then computes
in float32 too.
"""

import argparse
import json
import time

import numpy as np
import sklearn
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--features", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--n-init", type=int, required=True)
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algorithm", choices=["lloyd", "elkan"], default="lloyd")
    p.add_argument("--init", choices=["k-means++", "random"], default="k-means++")
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args()

    x = np.fromfile(a.data, dtype="<f4").reshape(-1, a.features)
    seconds = []
    for _ in range(a.repeats):
        km = KMeans(n_clusters=a.k, init=a.init, n_init=a.n_init, max_iter=a.max_iter, tol=a.tol,
                    random_state=a.seed, algorithm=a.algorithm)
        t = time.perf_counter()
        km.fit(x)
        seconds.append(time.perf_counter() - t)
    print(json.dumps({
        "seconds": seconds,
        "iterations": int(km.n_iter_),
        "inertia": float(km.inertia_),
        "cluster_sizes": np.bincount(km.labels_, minlength=a.k).tolist(),
        "samples": int(x.shape[0]),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "threads": {i["internal_api"]: i["num_threads"] for i in threadpool_info()},
    }))


if __name__ == "__main__":
    main()
