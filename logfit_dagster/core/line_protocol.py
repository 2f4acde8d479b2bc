"""How a line model is selected and judged: as it will be used, on a system it never saw.

Leave-one-source-out over the recorded label sets rewards what does not carry: most sources
have a near neighbour among the others (HDFS beside Hadoop, Apache beside WebServer), so a
model that memorises one does well on the other and no better on a new system. So sources are
grouped into families of systems, and a model is scored on each family having trained on the
others (leave-one-family-out). A source of no known family is a family of its own.

The plain choice a user would make instead, a character n-gram logistic regression on the raw
lines, is scored in the same folds beside every model (:func:`baseline_pipeline`).
"""

from __future__ import annotations

import numpy as np

#: family -> (why these systems belong together, the sources). Names are the recorded label
#: sets' systems and Loghub's; a registry source named after one (``loghub_HDFS``) joins it.
SYSTEM_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "hpc_kernel": (
        "supercomputers and kernels: node and hardware events, RAS messages, machine checks",
        ("HPC", "BGL", "Thunderbird", "KernelErrors"),
    ),
    "distributed": (
        "distributed storage and compute: block and task life cycles, RPC, leases, cloud APIs",
        ("HDFS", "Hadoop", "Spark", "Zookeeper", "OpenStack"),
    ),
    "desktop_os": (
        "operating systems: daemons, drivers, session and update services",
        ("Linux", "Mac", "Windows"),
    ),
    "mobile": (
        "mobile devices and their apps: framework services, sensors, app events",
        ("Android", "HealthApp"),
    ),
    "servers_apps": (
        "web servers, proxies and application services: requests, connections, stack traces",
        ("Apache", "WebServer", "Proxifier", "JavaApp", "Microservices"),
    ),
    "db_security": (
        "databases and security: queries and transactions, authentication, access control",
        ("DatabaseErrors", "SecurityEvents", "OpenSSH"),
    ),
}


def family_of(source: str) -> str:
    """The family of a source: by its name, its suffix after ``_`` (``loghub_HDFS``), or
    itself when it belongs to none."""
    candidates = [source, source.rsplit("_", 1)[-1], source.split("_", 1)[-1]]
    for family, (_, members) in SYSTEM_FAMILIES.items():
        lowered = {m.lower() for m in members}
        if any(c.lower() in lowered for c in candidates):
            return family
    return source


def family_groups(sources) -> np.ndarray:
    """The family of each source, as the groups of a group k-fold."""
    return np.array([family_of(str(s)) for s in sources])


def baseline_pipeline():
    """The baseline every line model is reported beside: character n-grams (3-5, word-bounded)
    of the raw line, TF-IDF, and a class-balanced logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5)),
        LogisticRegression(class_weight="balanced", max_iter=2000),
    )


# labelled lines from which the baseline's folds are fitted in parallel processes
PARALLEL_FROM_LINES = 20_000


def baseline_out_of_fold(
    lines, fold_sources: list[set[str]], n_jobs: int | None = None
) -> np.ndarray:
    """The baseline's probability for each labelled line, from a fit on the lines of the other
    folds (``fold_sources``: the sources each fold holds out, as the model's own selection
    held them out). The folds are fitted in ``n_jobs`` processes (default: every core for
    :data:`PARALLEL_FROM_LINES` lines or more, else this one).

    Args:
        lines: ``source``, ``raw`` and ``label`` (LOOK/SKIP), one row per line.
    """
    import os

    from joblib import delayed

    from logfit_dagster.core.parallel import run_jobs

    raw = lines["raw"].astype(str).to_numpy()
    y = (lines["label"] == "LOOK").to_numpy().astype(int)
    source = lines["source"].astype(str).to_numpy()
    out = np.full(len(lines), np.nan)
    tests = [np.isin(source, list(held)) for held in fold_sources]
    jobs = []
    for test in tests:
        train = ~test
        if test.any() and len(np.unique(y[train])) == 2:
            jobs.append((test, delayed(_fit_predict)(raw[train], y[train], raw[test])))
        elif test.any():  # one class to learn from: that class, for certain
            out[test] = float(y[train][0]) if train.any() else 0.5
    if n_jobs is None:
        # worker processes cost seconds to start: worth it only for a big fit
        n_jobs = (os.cpu_count() or 1) if len(lines) >= PARALLEL_FROM_LINES else 1
    predictions = run_jobs((job for _, job in jobs), n_jobs)
    for (test, _), predicted in zip(jobs, predictions, strict=True):
        out[test] = predicted
    return out


def _fit_predict(train_raw, train_y, test_raw) -> np.ndarray:
    return baseline_pipeline().fit(train_raw, train_y).predict_proba(test_raw)[:, 1]
