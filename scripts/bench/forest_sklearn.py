"""scikit-learn's RandomForestClassifier on the arrays the random-forest stage saw.

Used by tests/forest.rs (accuracy parity) and host/sitsflow/benches/forest.rs (speed). The
caller writes raw little-endian arrays and a job file; this prints one JSON object.

    python3 forest_sklearn.py job.json

job.json:
    train_x, train_y   paths: float32 n_train × n_features (NaN = missing), uint16 labels
    n_train, n_features
    test_x, n_test     path and rows to predict
    test_y             optional path: uint16 reference labels (0 = no reference) for OA / kappa
    params             RandomForestClassifier keyword arguments except random_state
    seeds              list of random_state values, one fit each
    proba_dir          optional folder: proba_<seed>.f32, float32 n_test × classes, per seed
    n_jobs             optional, default -1 (every core)
    predict_repeats    optional, default 1: predict_proba runs this often, the median time is kept

Output: {"sklearn": version, "classes": [...], "runs": [{"seed", "fit_seconds",
"predict_seconds", "predict_cpu_seconds", "oa", "kappa", "oob_score"}]}. Labels 0 are left
out of training, as the stage does. Timings are wall-clock inside this process (no file
reading); predict_cpu_seconds is the process's CPU time (every thread) around predict_proba.
"""

import json
import sys
import time

import numpy as np
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, cohen_kappa_score


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    nf = job["n_features"]
    x = np.fromfile(job["train_x"], dtype="<f4").reshape(job["n_train"], nf)
    y = np.fromfile(job["train_y"], dtype="<u2")
    keep = y != 0
    x, y = x[keep], y[keep]
    test = np.fromfile(job["test_x"], dtype="<f4").reshape(job["n_test"], nf)
    reference = np.fromfile(job["test_y"], dtype="<u2") if job.get("test_y") else None
    runs = []
    classes = None
    for i, seed in enumerate(job["seeds"]):
        model = RandomForestClassifier(random_state=seed, n_jobs=job.get("n_jobs", -1), **job["params"])
        started = time.perf_counter()
        model.fit(x, y)
        fit_seconds = time.perf_counter() - started
        times, cpu = [], []
        for _ in range(max(1, job.get("predict_repeats", 1))):
            started, started_cpu = time.perf_counter(), time.process_time()
            proba = model.predict_proba(test)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
        predict_seconds = sorted(times)[len(times) // 2]
        predict_cpu_seconds = sorted(cpu)[len(cpu) // 2]
        classes = model.classes_.tolist()
        run = {"seed": seed, "fit_seconds": fit_seconds, "predict_seconds": predict_seconds,
               "predict_cpu_seconds": predict_cpu_seconds}
        if getattr(model, "oob_score_", None) is not None:
            run["oob_score"] = float(model.oob_score_)
        if reference is not None:
            # First maximum, as the Rust side takes it.
            predicted = model.classes_[np.argmax(proba, axis=1)]
            scored = reference != 0
            run["oa"] = float(accuracy_score(reference[scored], predicted[scored]))
            run["kappa"] = float(cohen_kappa_score(reference[scored], predicted[scored]))
        if job.get("proba_dir"):
            proba.astype("<f4").tofile(f"{job['proba_dir']}/proba_{seed}.f32")
        runs.append(run)
    print(json.dumps({"sklearn": sklearn.__version__, "classes": classes, "runs": runs}))


if __name__ == "__main__":
    main()
