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


# labelled lines from which the baseline's folds are fitted in parallel processes (its n-grams
# are counted once, in this one). Two processes start with their imports and a copy of the
# counts: on the default sources' 85,000 lines they took 29-34 s against 35-40 s in one on an
# idle 2-core machine, and in ``logfit materialize``, where the step runs beside the template
# model's pretraining, they made the stage 10 s slower than one process did.
PARALLEL_FROM_LINES = 200_000


def baseline_out_of_fold(
    lines, fold_sources: list[set[str]], n_jobs: int | None = None
) -> np.ndarray:
    """The baseline's probability for each labelled line, from a fit on the lines of the other
    folds (``fold_sources``: the sources each fold holds out, as the model's own selection
    held them out). The folds are fitted in ``n_jobs`` processes (default: every core for
    :data:`PARALLEL_FROM_LINES` lines or more, else this one).

    Each line's character n-grams are counted once, not once per fold: a fold keeps the
    n-grams its training lines hold and weighs them by their document frequency there, which is
    what :func:`baseline_pipeline` fitted on those lines computes (same vocabulary, same
    order, same numbers; ``tests/test_models.py`` holds them equal). Counting is what costs:
    a fold refitted the vectorizer on all its training lines and transformed its test lines.

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
    fitted = []
    for held in fold_sources:
        test = np.isin(source, list(held))
        if test.any() and len(np.unique(y[~test])) == 2:
            fitted.append(test)
        elif test.any():  # one class to learn from: that class, for certain
            out[test] = float(y[~test][0]) if (~test).any() else 0.5
    if not fitted:
        return out
    if n_jobs is None:
        # worker processes cost seconds to start: worth it only for a big fit
        n_jobs = (os.cpu_count() or 1) if len(lines) >= PARALLEL_FROM_LINES else 1
    counts = char_ngram_counts(raw)
    predictions = run_jobs(
        (delayed(_fit_predict)(counts[~test], y[~test], counts[test]) for test in fitted),
        n_jobs,
    )
    for test, predicted in zip(fitted, predictions, strict=True):
        out[test] = predicted
    return out


def char_ngram_counts(raw: np.ndarray):
    """The baseline vectorizer's n-gram counts of every line (CSR, float, columns in the sorted
    order of every n-gram seen): exactly its ``CountVectorizer`` counts, computed by words.

    Its analyzer (``char_wb``) takes the n-grams of each whitespace-separated word of the
    lowercased line, padded with a space on either side, independently of the other words. So
    a line's counts are its word counts times each distinct word's n-gram counts: one sparse
    product, where the vectorizer slices every word of every line (2.4 times faster on the
    four default sources' 85,000 lines, whose 139,000 distinct words recur).
    """
    from sklearn.feature_extraction.text import CountVectorizer

    options = baseline_pipeline().steps[0][1].get_params()
    # what counting by words assumes of the vectorizer: per word n-grams, every one kept
    assumed = {"analyzer": "char_wb", "lowercase": True, "strip_accents": None, "binary": False}
    assumed |= {"preprocessor": None, "max_df": 1.0, "min_df": 1, "max_features": None}
    if any(options[k] != v for k, v in assumed.items()):
        raise ValueError(f"counting by words assumes a vectorizer with {assumed}")
    by_word = CountVectorizer(analyzer=_words, dtype=np.float64)
    words = by_word.fit_transform(raw).tocsr()
    grams = CountVectorizer(
        analyzer=CountVectorizer(
            analyzer="char_wb", ngram_range=options["ngram_range"]
        ).build_analyzer(),
        dtype=np.float64,
    ).fit_transform(by_word.get_feature_names_out())
    counts = (words @ grams).tocsr()
    counts.sort_indices()
    return counts


def _words(line: str) -> list[str]:
    # what the char_wb analyzer splits a line into: its lowercased whitespace-separated words
    return line.lower().split()


def _fit_predict(train_counts, train_y, test_counts) -> np.ndarray:
    """The baseline fitted on the training lines' counts: the n-grams they hold, TF-IDF with
    their document frequencies, the pipeline's own classifier."""
    from sklearn.base import clone
    from sklearn.feature_extraction.text import TfidfTransformer

    pipeline = baseline_pipeline()
    vectorizer, classifier = pipeline.steps[0][1], clone(pipeline.steps[-1][1])
    kept = np.flatnonzero(train_counts.getnnz(axis=0))
    tfidf = TfidfTransformer(
        norm=vectorizer.norm,
        use_idf=vectorizer.use_idf,
        smooth_idf=vectorizer.smooth_idf,
        sublinear_tf=vectorizer.sublinear_tf,
    )
    features = tfidf.fit_transform(train_counts[:, kept])
    classifier.fit(features, train_y)
    return classifier.predict_proba(tfidf.transform(test_counts[:, kept]))[:, 1]
