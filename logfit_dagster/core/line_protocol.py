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
    four default sources' 85,000 lines, whose 139,000 distinct words recur), and the distinct
    words' n-grams are counted in numpy (:func:`word_ngram_counts`, 3.3 times faster again).
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
    names = by_word.get_feature_names_out()
    grams = word_ngram_counts(names, *options["ngram_range"])
    if grams is None:  # a word numpy cannot hold as characters: the vectorizer counts them
        grams = CountVectorizer(
            analyzer=CountVectorizer(
                analyzer="char_wb", ngram_range=options["ngram_range"]
            ).build_analyzer(),
            dtype=np.float64,
        ).fit_transform(names)
    counts = (words @ grams).tocsr()
    counts.sort_indices()
    return counts


def word_ngram_counts(words, low: int, high: int):
    """Each distinct word's ``char_wb`` n-gram counts (``low`` to ``high`` characters), as the
    vectorizer counts them, columns in the sorted order of the n-grams: 3.3 times faster than
    the vectorizer on the default sources' 139,000 distinct words, exactly equal.

    The vectorizer pads a word with a space either side and takes every substring of each
    length from ``low`` up to the padded word's own length (at most ``high``). Here those are
    taken for all words at once as code points, and each n-gram is packed into integers, three
    21-bit code points to each, so that sorting the integers sorts the strings (a shorter
    n-gram is padded with 0, below every character, as Python's order puts a prefix first).
    None where that does not hold: a word with a NUL character, or one that has no code points
    (a lone surrogate).
    """
    import scipy.sparse as sp

    padded = [f" {w} " for w in words]
    if not padded:
        return sp.csr_matrix((0, 0))
    try:
        text = "".join(padded).encode("utf-32-le")
    except UnicodeEncodeError:
        return None
    points = np.frombuffer(text, dtype=np.uint32).astype(np.uint64)
    if not points.all():
        return None
    lengths = np.fromiter(map(len, padded), dtype=np.int64, count=len(padded))
    starts = np.cumsum(lengths) - lengths
    packs = -(-high // 3)
    rows, keys = [], [[] for _ in range(packs)]
    for n in range(low, high + 1):
        per = np.where(lengths >= n, lengths - n + 1, 0)
        word = np.repeat(np.arange(len(padded)), per)
        at = starts[word] + np.arange(len(word)) - np.repeat(np.cumsum(per) - per, per)
        rows.append(word)
        for pack in range(packs):
            key = np.zeros(len(word), dtype=np.uint64)
            for k in range(3 * pack, 3 * pack + 3):
                key <<= np.uint64(21)
                if k < n:
                    key |= points[at + k]
            keys[pack].append(key)
    rows = np.concatenate(rows)
    keys = [np.concatenate(k) for k in keys]
    order = np.lexsort(keys[::-1])
    keys = [k[order] for k in keys]
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.logical_or.reduce([k[1:] != k[:-1] for k in keys])
    column = np.empty(len(order), dtype=np.int64)
    column[order] = np.cumsum(first) - 1
    # a word's repeated n-grams are summed as the coordinates become CSR
    return sp.csr_matrix(
        (np.ones(len(rows)), (rows, column)), shape=(len(padded), int(first.sum()))
    )


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
