"""The LOOK/SKIP line classifier: TF-IDF + handcrafted features, logistic regression.

Training works on distinct ``(source, shape, label)`` rows weighted by how many lines they
stand for, which gives the same fit as training on every line at a fraction of the cost.
Model selection is a grid search scored by GroupKFold with the source as the group: a model is
never scored on a source it was trained on. The fitted pipeline exports to portable JSON
(vocabularies, idf, coefficients, scaler, feature version), and :class:`LineScorer` reproduces
sklearn's probabilities from that JSON with plain Python and numpy: no pickle is ever needed
to score.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import pandas as pd
import pyarrow as pa
from joblib import delayed
from scipy import sparse
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.preprocessing import normalize as sk_normalize

from logfit_dagster.core.errors import TrainingDataError
from logfit_dagster.core.line_features import (
    FEATURE_VERSION,
    HAND_FEATURES,
    MAX_SHAPE_CHARS,
    handcrafted_matrix,
    normalize_column,
    shape_column,
)
from logfit_dagster.core.line_protocol import family_groups
from logfit_dagster.core.line_scoring import (  # noqa: F401 (the scorer's home before)
    MAX_CACHED_SHAPES,
    MODEL_FORMAT,
    SCORE_BATCH,
    LineScorer,
)
from logfit_dagster.core.parallel import run_jobs
from logfit_dagster.core.scores import best_threshold, weighted_f1

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
WORD_NGRAMS = (1, 3)
CHAR_NGRAMS = (3, 6)


@dataclass(frozen=True)
class LineModelParams:
    C: float = 4.0
    class_weight: str | None = "balanced"
    word_max_features: int | None = 50_000
    char_max_features: int | None = 100_000
    # How much a distinct row weighs in the fit: its line count ("lines"), its square root, or 1.
    # With "lines" a few shapes repeated thousands of times steer the model; "sqrt" scored better
    # both on held-out sources and on a system none of the label sets covers
    # (benchmarks/line_features_ablation.py). Scores are always weighted by lines.
    row_weight: str = "sqrt"


def fit_weights(weight: np.ndarray, how: str) -> np.ndarray:
    """The sample weights of the fit from each row's line count (see ``row_weight``)."""
    weight = np.asarray(weight, dtype=float)
    if how == "lines":
        return weight
    if how == "sqrt":
        return np.sqrt(weight)
    if how == "none":
        return np.ones_like(weight)
    raise ValueError(f"row_weight {how!r}: use lines, sqrt or none")


def build_pipeline(params: LineModelParams) -> Pipeline:
    features = ColumnTransformer(
        [
            (
                "word",
                TfidfVectorizer(
                    token_pattern=TOKEN_PATTERN,
                    ngram_range=WORD_NGRAMS,
                    sublinear_tf=True,
                    max_features=params.word_max_features,
                    dtype=np.float64,
                ),
                "normalized",
            ),
            (
                "char",
                TfidfVectorizer(
                    analyzer="char",
                    ngram_range=CHAR_NGRAMS,
                    sublinear_tf=True,
                    max_features=params.char_max_features,
                    dtype=np.float64,
                ),
                "shape",
            ),
            ("hand", StandardScaler(), list(HAND_FEATURES)),
        ]
    )
    classifier = LogisticRegression(
        C=params.C, class_weight=params.class_weight, solver="liblinear", max_iter=2000
    )
    return Pipeline([("features", features), ("clf", classifier)])


def training_rows(lines: pd.DataFrame, max_chars: int = MAX_SHAPE_CHARS) -> pd.DataFrame:
    """Distinct (source, shape, label) rows of labelled lines, with weights and features.

    ``lines`` has ``source``, ``raw`` and ``label`` (LOOK/SKIP); lines without a label are not
    training data and must be left out (and counted) by the caller.
    """
    missing = {"source", "raw", "label"} - set(lines.columns)
    if missing:
        raise TrainingDataError(f"labelled lines lack column(s) {sorted(missing)}")
    if lines["label"].isna().any():
        raise TrainingDataError("labelled lines include unlabeled rows; leave them out first")
    bad = set(lines["label"].unique()) - {"LOOK", "SKIP"}
    if bad:
        raise TrainingDataError(f"unknown label(s) {sorted(bad)}: expected LOOK or SKIP")
    shapes, index = shape_column(
        pa.array(lines["raw"].astype(str).tolist(), pa.string()), max_chars
    )
    frame = pd.DataFrame(
        {
            "source": lines["source"].to_numpy(),
            "shape_id": index,
            "y": (lines["label"] == "LOOK").to_numpy().astype(np.int8),
            # a row that stands for several lines (see ``collect_labelled_lines``) weighs them all
            "weight": lines["weight"].to_numpy().astype(np.int64)
            if "weight" in lines
            else np.ones(len(lines), dtype=np.int64),
        }
    )
    rows = frame.groupby(["source", "shape_id", "y"], sort=True)["weight"].sum().reset_index()
    shape_text = shapes.to_pylist()
    normalized = normalize_column(shapes).to_pylist()
    rows["shape"] = [shape_text[i] for i in rows["shape_id"]]
    rows["normalized"] = [normalized[i] for i in rows["shape_id"]]
    hand = handcrafted_matrix(shape_text)[rows["shape_id"].to_numpy()]
    for j, name in enumerate(HAND_FEATURES):
        rows[name] = hand[:, j]
    return rows


#: Lines of each source kept whole for what must see raw lines (the char n-gram baseline): every
#: line of a source up to this many, else a seeded uniform sample of this many.
SAMPLE_LINES_PER_SOURCE = 50_000


def collect_labelled_lines(
    batches,
    max_chars: int = MAX_SHAPE_CHARS,
    per_source: int = SAMPLE_LINES_PER_SOURCE,
    seed: int = 0,
) -> pd.DataFrame:
    """Labelled lines read batch by batch into a frame that stands for all of them, in memory
    bounded by the distinct shapes and ``per_source``, not by the lines.

    ``batches``: tables of ``source``, ``raw`` and ``label`` (LOOK/SKIP). The result has those
    columns, ``weight`` (how many lines a row stands for) and ``sampled``:

    - ``sampled`` rows are lines kept as they are: every line of a source with at most
      ``per_source`` lines, else a uniform sample of ``per_source`` of them (seeded: the same
      lines every run); each weighs 1;
    - the other rows, one per ``(source, shape, label)`` (shape at ``max_chars``, as
      :func:`training_rows` cuts it), stand for that group's lines the sample left out: one of
      them, weighing how many they are.

    So :func:`training_rows` of the result equals :func:`training_rows` of every line, and the
    ``sampled`` rows are a fair sample of each source for what needs raw lines.
    """
    rng = np.random.default_rng(seed)
    kept: dict[str, pd.DataFrame] = {}  # per source: the sample so far, with its random keys
    groups: dict[tuple, list] = {}  # (source, shape, y) -> [lines, one raw line]
    seen = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        frame = batch.select(["source", "raw", "label"]).to_pandas()
        if frame["label"].isna().any():
            raise TrainingDataError("labelled lines include unlabeled rows; leave them out first")
        shapes, index = shape_column(pa.array(frame["raw"].astype(str), pa.string()), max_chars)
        shape_text = np.asarray(shapes.to_pylist(), dtype=object)
        frame["shape"] = shape_text[index]
        frame["key"] = rng.random(len(frame))
        frame["position"] = np.arange(seen, seen + len(frame))
        seen += len(frame)
        for (source, shape, label), part in frame.groupby(["source", "shape", "label"], sort=False):
            group = groups.setdefault((source, shape, label), [0, part["raw"].iloc[0]])
            group[0] += len(part)
        for source, part in frame.groupby("source", sort=False):
            sample = pd.concat([kept[source], part]) if source in kept else part
            if len(sample) > per_source:
                sample = sample.nsmallest(per_source, "key")
            kept[str(source)] = sample.copy()
    if not kept:
        return pd.DataFrame(
            {
                "source": pd.Series(dtype=object),
                "raw": pd.Series(dtype=object),
                "label": pd.Series(dtype=object),
                "weight": pd.Series(dtype="int64"),
                "sampled": pd.Series(dtype=bool),
            }
        )
    sample = pd.concat(kept.values(), ignore_index=True)
    in_sample = sample.groupby(["source", "shape", "label"]).size().to_dict()
    rest = [
        (source, raw, label, count - in_sample.get((source, shape, label), 0))
        for (source, shape, label), (count, raw) in groups.items()
        if count > in_sample.get((source, shape, label), 0)
    ]
    sample = sample.sort_values("position")  # the lines' own order
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "source": sample["source"].to_numpy(),
                    "raw": sample["raw"].to_numpy(),
                    "label": sample["label"].to_numpy(),
                    "weight": np.ones(len(sample), dtype=np.int64),
                    "sampled": True,
                }
            ),
            pd.DataFrame(
                {
                    "source": [r[0] for r in rest],
                    "raw": [r[1] for r in rest],
                    "label": [r[2] for r in rest],
                    "weight": np.array([r[3] for r in rest], dtype=np.int64),
                    "sampled": False,
                }
            ),
        ],
        ignore_index=True,
    )


def weighted_scores(
    y: np.ndarray, proba: np.ndarray, weight: np.ndarray, threshold: float = 0.5
) -> dict:
    scores = weighted_f1(y, proba, weight, threshold)
    confusion = {k: int(scores.pop(k)) for k in ("tp", "fp", "fn", "tn")}
    return {
        **scores,
        "average_precision": float(average_precision_score(y, proba, sample_weight=weight))
        if 0 < y.sum() < len(y)
        else math.nan,
        "lines": int(scores["lines"]),
        "confusion": confusion,
    }


@dataclass
class SelectionResult:
    best: LineModelParams
    grid: list[dict]
    folds: int
    out_of_fold: np.ndarray  # out-of-fold probability of the best params, per training row
    per_source: dict[str, dict] = field(default_factory=dict)
    cv: dict = field(default_factory=dict)
    protocol: str = "leave-family-out"
    splits: list = field(default_factory=list)
    # the LOOK threshold with the best F1 on the out-of-fold predictions: chosen on held-out
    # families, not fixed at 0.5 (a new system's LOOK share differs from the training mix)
    threshold: float = 0.5
    cv_at_threshold: dict = field(default_factory=dict)


def holdout_groups(sources) -> tuple[np.ndarray, str]:
    """What a fold holds out: a family of systems (see ``line_protocol``), or a source when the
    sources span fewer than two families. Returns the group of each row and the protocol's name."""
    families = family_groups(sources)
    if len(np.unique(families)) >= 2:
        return families, "leave-family-out"
    return np.asarray(sources, dtype=object).astype(str), "leave-source-out"


def source_folds(
    rows: pd.DataFrame, max_folds: int = 5
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """GroupKFold splits that never put a family of systems (or, with one family, a source)
    on both sides of a split; and the protocol's name."""
    groups, protocol = holdout_groups(rows["source"].to_numpy())
    folds = min(max_folds, len(np.unique(groups)))
    return list(GroupKFold(n_splits=folds).split(rows, rows["y"], groups=groups)), protocol


class _AnalyzedRows:
    """Training rows analysed once for a whole model selection.

    Every word and character n-gram of every row is counted once; each fold then takes its
    vocabulary (the ``max_features`` most frequent n-grams of its training rows), idf and
    feature scaling from its training rows only, as ``build_pipeline``'s vectorizers and scaler
    fitted on them would: a fold costs column selections and one logistic regression, not a
    re-analysis of every line.
    """

    def __init__(self, rows: pd.DataFrame):
        self.word = CountVectorizer(
            token_pattern=TOKEN_PATTERN, ngram_range=WORD_NGRAMS, dtype=np.float64
        ).fit_transform(rows["normalized"])
        self.char = CountVectorizer(
            analyzer="char", ngram_range=CHAR_NGRAMS, dtype=np.float64
        ).fit_transform(rows["shape"])
        self.hand = rows[list(HAND_FEATURES)].to_numpy(dtype=np.float64)

    @staticmethod
    def _tfidf(counts, train, test, max_features):
        seen = counts[train]
        df = np.bincount(seen.indices, minlength=counts.shape[1])
        kept = np.flatnonzero(df)
        if max_features is not None and len(kept) > max_features:
            frequency = np.asarray(seen.sum(axis=0)).ravel()[kept]
            kept = np.sort(kept[np.argsort(-frequency, kind="stable")[:max_features]])
        idf = np.log((1 + len(train)) / (1 + df[kept])) + 1.0

        def weigh(matrix):
            matrix = matrix[:, kept].tocsr()
            matrix.data = (1.0 + np.log(matrix.data)) * idf[matrix.indices]
            return sk_normalize(matrix, norm="l2", copy=False)

        return weigh(seen), weigh(counts[test])

    def split(self, train, test, params: LineModelParams):
        word = self._tfidf(self.word, train, test, params.word_max_features)
        char = self._tfidf(self.char, train, test, params.char_max_features)
        scaler = StandardScaler().fit(self.hand[train])
        return tuple(
            sparse.hstack(
                [word[i], char[i], sparse.csr_matrix(scaler.transform(self.hand[part]))]
            ).tocsr()
            for i, part in enumerate((train, test))
        )


def _fit_and_score(params: LineModelParams, x_train, y_train, weights, x_test) -> np.ndarray:
    model = LogisticRegression(
        C=params.C, class_weight=params.class_weight, solver="liblinear", max_iter=2000
    )
    model.fit(x_train, y_train, sample_weight=weights)
    return model.predict_proba(x_test)[:, 1]


# Distinct rows from which the grid's fits run in worker processes. Two workers cost about 2.5 s
# to start (each imports scikit-learn and this module); on 2 cores the default grid over the
# recorded labels broke even at about 3,000 rows (3,125: 10.2 s in one process, 9.4 s in two),
# and the four default sources make about 100 rows (0.15 s against 2.4 s).
PARALLEL_FROM_ROWS = 3_000


def select_model(
    rows: pd.DataFrame, grid: list[LineModelParams], max_folds: int = 5, n_jobs: int | None = None
) -> SelectionResult:
    """Grid search scored by GroupKFold over sources; the out-of-fold scores of the best.

    The rows are analysed once (:class:`_AnalyzedRows`); the fits of every grid point and fold
    run in ``n_jobs`` worker processes (default: every core from ``PARALLEL_FROM_ROWS`` rows,
    one process below: starting the workers costs seconds).
    """
    sources = rows["source"].nunique()
    if sources < 2:
        raise TrainingDataError(
            f"leave-sources-out model selection needs labelled lines of at least 2 sources, got {sources}"
        )
    for name, group in rows.groupby("y"):
        if group["weight"].sum() == 0:
            raise TrainingDataError(f"no {'LOOK' if name else 'SKIP'} lines to learn from")
    if rows["y"].nunique() < 2:
        raise TrainingDataError("every labelled line has the same label: nothing to learn")
    splits, protocol = source_folds(rows, max_folds)
    folds = len(splits)
    y, w = rows["y"].to_numpy(), rows["weight"].to_numpy().astype(float)
    analyzed = _AnalyzedRows(rows)

    def fold_jobs():
        for params in grid:
            for train, test in splits:
                if len(np.unique(y[train])) < 2:
                    yield delayed(np.full)(len(test), float(y[train][0]))
                    continue
                x_train, x_test = analyzed.split(train, test, params)
                weights = fit_weights(w[train], params.row_weight)
                yield delayed(_fit_and_score)(params, x_train, y[train], weights, x_test)

    if n_jobs is None:
        n_jobs = (os.cpu_count() or 1) if len(rows) >= PARALLEL_FROM_ROWS else 1
    # processes, not threads: liblinear holds the GIL; each job gets its fold's matrices only
    predictions = run_jobs(fold_jobs(), n_jobs, max_nbytes=None)
    results = []
    best_score, best, best_oof = -1.0, grid[0], None
    for g, params in enumerate(grid):
        oof = np.zeros(len(rows))
        for f, (_, test) in enumerate(splits):
            oof[test] = predictions[g * folds + f]
        scores = weighted_scores(y, oof, w)
        results.append(
            {
                **params.__dict__,
                "cv_f1": scores["f1"],
                "cv_precision": scores["precision"],
                "cv_recall": scores["recall"],
            }
        )
        if scores["f1"] > best_score:
            best_score, best, best_oof = scores["f1"], params, oof
    threshold, _ = best_threshold(y, best_oof, w)
    per_source = {}
    for source, idx in rows.groupby("source").indices.items():
        per_source[source] = weighted_scores(y[idx], best_oof[idx], w[idx], threshold)
    return SelectionResult(
        best,
        results,
        folds,
        best_oof,
        per_source,
        weighted_scores(y, best_oof, w),
        protocol,
        splits,
        threshold,
        weighted_scores(y, best_oof, w, threshold),
    )


def parameter_grid(
    C: list[float],
    class_weight: list[str | None],
    char_max_features: list[int | None],
    word_max_features: list[int | None],
    row_weight: list[str] = ("sqrt",),
) -> list[LineModelParams]:
    return [
        LineModelParams(c, cw, wmf, cmf, rw)
        for c, cw, cmf, wmf, rw in product(
            C, class_weight, char_max_features, word_max_features, row_weight
        )
    ]


def fit(rows: pd.DataFrame, params: LineModelParams) -> Pipeline:
    model = build_pipeline(params)
    model.fit(
        rows,
        rows["y"].to_numpy(),
        clf__sample_weight=fit_weights(rows["weight"].to_numpy(), params.row_weight),
    )
    return model


# -- export and scoring without pickle ---------------------------------------------------------


def export_model(pipeline: Pipeline, extra: dict | None = None) -> dict:
    """The fitted pipeline as plain JSON-able data (what :class:`LineScorer` reads)."""
    features: ColumnTransformer = pipeline.named_steps["features"]
    clf: LogisticRegression = pipeline.named_steps["clf"]
    word: TfidfVectorizer = features.named_transformers_["word"]
    char: TfidfVectorizer = features.named_transformers_["char"]
    hand: StandardScaler = features.named_transformers_["hand"]
    coef = clf.coef_[0]
    n_word, n_char = len(word.vocabulary_), len(char.vocabulary_)
    return {
        "format": MODEL_FORMAT,
        "feature_version": FEATURE_VERSION,
        "word": {
            "token_pattern": TOKEN_PATTERN,
            "ngram_range": list(WORD_NGRAMS),
            "vocabulary": {t: int(i) for t, i in word.vocabulary_.items()},
            "idf": word.idf_.tolist(),
            "coef": coef[:n_word].tolist(),
        },
        "char": {
            "ngram_range": list(CHAR_NGRAMS),
            "vocabulary": {t: int(i) for t, i in char.vocabulary_.items()},
            "idf": char.idf_.tolist(),
            "coef": coef[n_word : n_word + n_char].tolist(),
        },
        "hand": {
            "names": list(HAND_FEATURES),
            "mean": hand.mean_.tolist(),
            "scale": hand.scale_.tolist(),
            "coef": coef[n_word + n_char :].tolist(),
        },
        "intercept": float(clf.intercept_[0]),
        "threshold": 0.5,
        **(extra or {}),
    }
