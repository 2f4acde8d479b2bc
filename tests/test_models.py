"""The line classifier, its JSON export and scorer, session classifiers, and the model assets
with a real MLflow store in a temporary folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from logfit_dagster.core.errors import ModelFileError, TrainingDataError
from logfit_dagster.core.line_model import (
    PARALLEL_FROM_ROWS,
    LineModelParams,
    LineScorer,
    export_model,
    fit,
    select_model,
    source_folds,
    training_rows,
)
from logfit_dagster.core.line_scorers import load_line_scorer
from logfit_dagster.core.session_model import train_session_models
from logfit_dagster.partitions import LOG_SOURCE
from tests.graph import ASSETS as GRAPH
from tests.graph import offline_resources

SMALL = LineModelParams(C=1.0, word_max_features=2000, char_max_features=5000)


def labelled_lines(n_per_source: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for source in ("alpha", "beta", "gamma", "delta"):
        for i in range(n_per_source):
            bad = rng.random() < 0.3
            raw = (
                f"2024-01-0{i % 9 + 1} 10:{i % 60:02d} {source} ERROR disk {i} failed: timeout"
                if bad
                else f"2024-01-0{i % 9 + 1} 10:{i % 60:02d} {source} INFO served request {i} ok"
            )
            rows.append({"source": source, "raw": raw, "label": "LOOK" if bad else "SKIP"})
    return pd.DataFrame(rows)


def test_folds_never_share_a_source():
    rows = training_rows(labelled_lines())
    folds, protocol = source_folds(rows, 4)
    assert len(folds) == 4 and protocol == "leave-family-out"
    for train, test in folds:
        assert not set(rows["source"].iloc[train]) & set(rows["source"].iloc[test])
    assert sorted(np.concatenate([t for _, t in folds])) == list(range(len(rows)))


def test_selection_scores_held_out_sources_and_rejects_bad_data():
    rows = training_rows(labelled_lines())
    grid = [SMALL, LineModelParams(C=4.0, word_max_features=2000, char_max_features=5000)]
    result = select_model(rows, grid)
    assert result.folds == 4 and len(result.grid) == 2
    assert set(result.per_source) == {"alpha", "beta", "gamma", "delta"}
    assert result.cv["f1"] > 0.9 and result.cv["lines"] == 240
    # a selection this small stays in one process; fitted in two it scores the same
    assert len(rows) < PARALLEL_FROM_ROWS
    in_two = select_model(rows, grid, n_jobs=2)
    assert in_two.best == result.best and np.array_equal(in_two.out_of_fold, result.out_of_fold)
    with pytest.raises(TrainingDataError, match="at least 2 sources"):
        select_model(rows[rows["source"] == "alpha"], [SMALL])
    same = labelled_lines().assign(label="SKIP")
    with pytest.raises(TrainingDataError, match="same label"):
        select_model(training_rows(same), [SMALL])
    with pytest.raises(TrainingDataError, match="unknown label"):
        training_rows(labelled_lines().assign(label="MAYBE"))


def test_json_export_reproduces_sklearn_on_held_out_lines(shared_data):
    records = []
    for name in ("Apache", "HDFS", "Zookeeper", "OpenSSH"):
        path = shared_data / "llm-labels" / f"{name}.jsonl"
        records += [json.loads(x) for x in path.read_text().splitlines()]
    lines = pd.DataFrame(
        {
            "source": [r["system"] for r in records],
            "raw": [r["raw_line"] for r in records],
            "label": [r["label"] for r in records],
        }
    )
    train = training_rows(lines[lines["source"] != "OpenSSH"])
    model = fit(train, LineModelParams(word_max_features=20_000, char_max_features=30_000))
    scorer = LineScorer(json.loads(json.dumps(export_model(model))))
    held_out = lines[lines["source"] == "OpenSSH"]
    rows = training_rows(held_out)
    expected = model.predict_proba(rows)[:, 1]
    assert np.abs(scorer.score_shapes(rows["shape"].tolist()) - expected).max() < 1e-6
    # line by line through the column-wise path: same shapes, same probabilities
    by_line = scorer.score_lines(held_out["raw"].tolist())
    shape_probability = dict(zip(rows["shape"], expected, strict=True))
    from logfit_dagster.core.line_features import shape_of

    again = np.array([shape_probability[shape_of(r)] for r in held_out["raw"]])
    assert np.abs(by_line - again).max() < 1e-6
    # a bounded shape cache gives the same probabilities, in batches, and stays in its bound
    bounded = LineScorer(json.loads(json.dumps(export_model(model))), max_cached=50)
    raws = held_out["raw"].tolist()
    batched = np.concatenate(
        [bounded.score_lines(raws[i : i + 300]) for i in range(0, len(raws), 300)]
    )
    assert np.abs(batched - by_line).max() < 1e-12
    assert bounded.shapes_cached <= 50 < len(set(rows["shape"])) <= bounded.shapes_scored


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a",
        "ab",
        "Error  at   x\t\tY",
        "ÉCHEC: connexion refusée à 10.0.0.1",
        "one two three four five",
        "  leading and trailing  ",
        "tab\tand\nnewline",
    ],
)
def test_the_scorers_n_grams_are_scikit_learns(text):
    """The scorer counts n-grams without scikit-learn (so that loading a model to score never
    imports it): the same n-grams, in the same multiplicity, as scikit-learn's analyzers."""
    from sklearn.feature_extraction.text import CountVectorizer

    from logfit_dagster.core.line_model import CHAR_NGRAMS, TOKEN_PATTERN, WORD_NGRAMS
    from logfit_dagster.core.line_scoring import char_ngrams, word_ngrams

    for low, high in (CHAR_NGRAMS, (1, 3), (2, 2)):
        ours = char_ngrams(text, low, high)
        theirs = CountVectorizer(analyzer="char", ngram_range=(low, high)).build_analyzer()(text)
        assert ours == theirs
    token = re.compile(TOKEN_PATTERN)
    for low, high in (WORD_NGRAMS, (1, 1), (2, 3)):
        ours = word_ngrams(text, token, low, high)
        analyzer = CountVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(low, high))
        assert ours == analyzer.build_analyzer()(text)


def test_the_packed_char_lookup_counts_what_the_python_n_grams_count():
    """A char block looks its n-grams up as packed integer keys in numpy; what it finds, and
    so every score, is what the n-gram lists of :func:`char_ngrams` give, on texts with chars
    outside the vocabulary's alphabet, lone surrogates, whitespace runs, texts shorter than an
    n-gram, and more chars than one numpy pass takes."""
    from logfit_dagster.core.line_model import CHAR_NGRAMS
    from logfit_dagster.core.line_scoring import PACKED_CHARS, _TfidfPart, char_ngrams

    rng = np.random.default_rng(0)
    texts = [
        "",
        "ab",
        "Error  at   x\t\tY",
        "ÉCHEC: connexion refusée à 10.0.0.1",
        "bad byte \udcff here",
        "kernel: core dump NA ND " * 3,
        "∑ not in the alphabet ∑ at all",
    ]
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789 :.=-_/") + ["É", "é"]
    texts += ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(1, 1024, 120)]
    low, high = CHAR_NGRAMS
    grams = sorted({g for text in texts[:200] for g in char_ngrams(text, low, high)})
    vocabulary = {g: i for i, g in enumerate(grams[::3])}
    spec = {
        "vocabulary": vocabulary,
        "idf": rng.uniform(1, 5, len(vocabulary)).tolist(),
        "coef": rng.normal(size=len(vocabulary)).tolist(),
        "ngram_range": [low, high],
    }
    part = _TfidfPart(spec)
    assert part.packed is not None and part.pass_chars == PACKED_CHARS
    # passes of 10,000 chars: the texts take several (a text is never split between two)
    part.pass_chars = 10_000
    assert sum(map(len, texts)) > 4 * part.pass_chars
    packed = part.score_many(texts)
    part.packed = None  # the Python lookup, n-gram by n-gram
    assert np.abs(packed - part.score_many(texts)).max() < 1e-12
    assert np.count_nonzero(packed) > len(texts) // 2
    # an alphabet whose keys would not fit 63 bits is looked up in Python
    wide = {chr(0x4E00 + i) * 3: i for i in range(1100)}
    spec = {**spec, "vocabulary": wide, "idf": [1.0] * 1100, "coef": [1.0] * 1100}
    assert _TfidfPart(spec).packed is None
    assert _TfidfPart(spec).score_many([chr(0x4E00) * 4, "abc"]).tolist() == [1.0, 0.0]


def test_the_arrow_twin_of_an_export_scores_as_the_json_does(tmp_path):
    from logfit_dagster.core.line_scoring import read_binary, write_binary

    model = fit(training_rows(labelled_lines()), SMALL)
    spec = export_model(model, {"threshold": 0.37, "cv": {"f1": 0.5}})
    (tmp_path / "m.json").write_text(json.dumps(spec))
    write_binary(spec, tmp_path / "m.arrow")
    shapes = training_rows(labelled_lines())["shape"].tolist()
    from_json, from_arrow = (
        LineScorer.load(tmp_path / "m.json"),
        LineScorer.load(tmp_path / "m.arrow"),
    )
    assert np.array_equal(from_json.score_shapes(shapes), from_arrow.score_shapes(shapes))
    assert from_arrow.threshold == 0.37 and read_binary(tmp_path / "m.arrow")["cv"] == {"f1": 0.5}
    assert (tmp_path / "m.arrow").stat().st_size < (tmp_path / "m.json").stat().st_size
    (tmp_path / "bad.arrow").write_bytes(b"ARROW1 but not really")
    with pytest.raises(ModelFileError, match="bad.arrow: binary model file is corrupt"):
        LineScorer.load(tmp_path / "bad.arrow")


def test_bad_model_files_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found: .*nope.json"):
        LineScorer.load(tmp_path / "nope.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(ModelFileError, match="corrupt.json: model file is corrupt"):
        LineScorer.load(corrupt)
    model = fit(training_rows(labelled_lines()), SMALL)
    spec = export_model(model)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**spec, "feature_version": "line-features-0"}))
    with pytest.raises(ModelFileError, match="retrain look_skip_model"):
        LineScorer.load(old)
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps({k: v for k, v in spec.items() if k != "char"}))
    with pytest.raises(ModelFileError, match="incomplete or corrupt"):
        LineScorer.load(cut)


def _sessions(n: int, anomalous_every: int | None):
    sessions, splits = [], []
    for i in range(n):
        bad = anomalous_every is not None and i % anomalous_every == 0
        ids = [1, 2, 3, 3, 4] + ([9, 9] if bad else [5])
        sessions.append({"session_id": f"s{i}", "template_ids": ids})
        split = "test" if i % 10 == 0 else "dev" if i % 10 == 1 else "train"
        splits.append(
            {
                "session_id": f"s{i}",
                "split": split,
                "label": (1 if bad else 0) if anomalous_every is not None else None,
            }
        )
    splits = pd.DataFrame(splits)
    splits["label"] = splits["label"].astype("Int8")
    return pd.DataFrame(sessions), splits


def test_session_models_train_on_train_pick_threshold_on_dev_score_test():
    sessions, splits = _sessions(200, anomalous_every=5)
    training = train_session_models(sessions, splits)
    assert [r.kind for r in training.results] == ["logistic_regression", "decision_tree"]
    for result in training.results:
        assert result.test["sessions"] == 20 and result.test["f1"] == 1.0
        assert set(result.test_scores["session_id"]) == set(
            splits.loc[splits["split"] == "test", "session_id"]
        )


def test_session_models_say_why_they_skip():
    sessions, splits = _sessions(200, anomalous_every=None)
    unsupervised = train_session_models(sessions, splits)
    assert unsupervised.results[0].kind == "isolation_forest" and "no labelled" in unsupervised.note
    sessions, splits = _sessions(5, anomalous_every=2)
    with pytest.raises(TrainingDataError, match="at least 10"):
        train_session_models(sessions, splits)
    sessions, splits = _sessions(200, anomalous_every=5)
    with pytest.raises(TrainingDataError, match="one class"):
        train_session_models(sessions, splits.assign(label=splits["label"] * 0))


# -- the assets, with MLflow -------------------------------------------------------------------

ASSETS = GRAPH
PARTITIONED = [
    "raw_logs",
    "parsed_logs",
    "log_templates",
    "sessions",
    "ground_truth_labels",
    "dataset_splits",
    "llm_labels",
    "session_model",
    "session_champion",
    "metrics_report",
]
SMALL_GRID = {"C": [1.0], "char_max_features": [5000], "word_max_features": [2000]}


def _resources():
    return offline_resources()


def _line_model_run(instance, margin: float):
    return dg.materialize(
        ASSETS,
        selection=[
            "labeled_lines",
            "look_skip_model",
            "look_skip_champion",
            "line_champion",
            "metrics_overview",
        ],
        instance=instance,
        resources=_resources(),
        run_config={
            "ops": {"look_skip_model": {"config": {**SMALL_GRID, "champion_margin": margin}}}
        },
        raise_on_error=False,
    )


def test_models_reports_mlflow_and_the_champion_gate(workdir):
    import mlflow

    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: mid_hdfs, origin: synthetic, kind: hdfs, lines: 12000, seed: 5}\n"
        "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["mid_hdfs", "tiny_bgl"])
        skipped = {}
        for source in ("mid_hdfs", "tiny_bgl"):
            result = dg.materialize(
                ASSETS,
                selection=PARTITIONED,
                partition_key=source,
                instance=instance,
                resources=_resources(),
                raise_on_error=False,
            )
            assert result.success, source
            event = next(
                e
                for e in result.get_asset_materialization_events()
                if e.asset_key == dg.AssetKey("session_model")
            )
            skipped[source] = event.materialization.metadata.get("skipped")
        # too few BGL sessions: the asset says why and trains nothing
        assert skipped["mid_hdfs"] is None and "at least 10" in skipped["tiny_bgl"].value
        report = pd.read_parquet(
            workdir / "data" / "assets" / "metrics_report" / "mid_hdfs.parquet"
        )
        assert {"logistic_regression", "decision_tree"} <= set(report["model"])
        assert (workdir / "data" / "reports" / "mid_hdfs" / "pr_curve.png").stat().st_size > 1000

        first = _line_model_run(instance, margin=0.02)
        assert first.success
        gate = {c.check_name: c.passed for c in first.get_asset_check_evaluations()}
        assert gate == {"class_balance": True, "champion_gate": True}
        champion = workdir / "data" / "models" / "look_skip_champion.json"
        assert json.loads(champion.read_text())["registered_version"] == "1"

        # a margin below zero demands a better model than the champion: the gate blocks
        second = _line_model_run(instance, margin=-1.0)
        gate = {c.check_name: c.passed for c in second.get_asset_check_evaluations()}
        assert gate == {"class_balance": True, "champion_gate": False}
        promoted = {e.asset_key.to_user_string() for e in second.get_asset_materialization_events()}
        assert "look_skip_model" in promoted and "look_skip_champion" not in promoted
        assert json.loads(champion.read_text())["registered_version"] == "1"

        scored = dg.materialize(
            ASSETS,
            selection=["scored_lines"],
            partition_key="tiny_bgl",
            instance=instance,
            resources=_resources(),
        )
        assert scored.success

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'data' / 'mlflow' / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("logfit-look-skip", "champion").version) == "1"
    assert len(client.search_model_versions("name='logfit-look-skip'")) == 2
    experiment = client.get_experiment_by_name("logfit")
    runs = client.search_runs([experiment.experiment_id], "tags.asset = 'look_skip_model'")
    assert len(runs) == 2 and 0 <= runs[0].data.metrics["cv_f1"] <= 1
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"look_skip_model.json", "plots"} <= artifacts
    scored_dir = workdir / "data" / "assets" / "scored_lines"
    lines = pd.read_parquet(scored_dir / "tiny_bgl.parquet")
    assert len(lines) == 800 and set(lines["label"]) <= {"LOOK", "SKIP"}
    # the counts, made while the lines were written batch by batch, are the table's
    meta = scored.get_asset_materialization_events()[0].materialization.metadata
    assert meta["lines"].value == 800
    assert meta["look_lines"].value == int((lines["label"] == "LOOK").sum())

    # The single-run backfill policy: both sources in one run, one step, the same scores.
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("log_source", ["mid_hdfs", "tiny_bgl"])
        bulk = dg.materialize(
            ASSETS,
            selection=["scored_lines"],
            instance=instance,
            resources=_resources(),
            tags={
                "dagster/asset_partition_range_start": "mid_hdfs",
                "dagster/asset_partition_range_end": "tiny_bgl",
            },
        )
        assert bulk.success
        steps = [e for e in bulk.all_events if e.is_step_success]
        assert len(steps) == 1
        partitions = {e.partition for e in bulk.get_asset_materialization_events()}
        assert partitions == {"mid_hdfs", "tiny_bgl"}
        bulk_meta = bulk.get_asset_materialization_events()[0].materialization.metadata
    assert pd.read_parquet(scored_dir / "tiny_bgl.parquet").equals(lines)
    mid = pd.read_parquet(scored_dir / "mid_hdfs.parquet")
    assert len(mid) > 0
    # the counts cover both sources, each as written
    assert bulk_meta["lines"].value == 800 + len(mid)
    assert bulk_meta["look_lines"].value == int((lines["label"] == "LOOK").sum()) + int(
        (mid["label"] == "LOOK").sum()
    )

    out = workdir / "scored.jsonl"
    log = workdir / "data" / "sources" / "tiny_bgl"
    log_file = next(p for p in log.rglob("*.log"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "logfit_dagster.cli",
            "classify",
            str(log_file),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "800 lines" in done.stderr and "lines/s" in done.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line_number"] for r in rows] == list(range(1, 801))
    assert np.allclose([r["probability"] for r in rows], lines["probability"], atol=1e-12)


def test_a_shape_masks_ids_numbers_and_padding_and_both_paths_agree():
    import pyarrow as pa

    from logfit_dagster.core.line_features import shape_column, shape_of

    uuid = "9f4ef63a-1b2c-4d5e-8f90-a64f992b7c01"
    cases = {
        f"[instance: {uuid}] Deleting instance files /var/lib/nova/instances/{uuid}_del": (
            "[instance: <uuid>] Deleting instance files /var/lib/nova/instances/<uuid>_del"
        ),
        f"req-{uuid} done in 0x1F3 ms": "req-<uuid> done in <hex> ms",
        "block 12345678 of 7 at a64f992 retry 3": "block 0 of 0 at <hex> retry 0",
        "col1    col2   12": "col0 col0 0",
    }
    lines = list(cases)
    shapes, indices = shape_column(pa.array(lines))
    assert [shapes[i].as_py() for i in indices] == list(cases.values())
    assert [shape_of(line) for line in lines] == list(cases.values())
    # two instances' deletions share one shape
    other = lines[0].replace(uuid, "00000000-aaaa-4bbb-8ccc-dddddddddddd")
    assert shape_of(other) == shape_of(lines[0])


def test_handcrafted_features_are_computed_column_wise_and_the_same_in_any_batch():
    from logfit_dagster.core.line_features import HAND_FEATURES, handcrafted_matrix

    shapes = [
        "ERROR disk 0 failed: /var/lib/data",
        "\tat org.foo.Bar(Baz.java:0)",
        "key=v a:b !!! <hex> <uuid> DISK_FULL",
        "café crème x=0 Über",
        "",
    ]
    m = handcrafted_matrix(shapes)
    f = {name: m[:, j] for j, name in enumerate(HAND_FEATURES)}
    assert f["has_level"].tolist() == [1, 0, 0, 0, 0]
    assert f["has_stack"].tolist() == [0, 1, 0, 0, 0] and f["leading_ws"][1] == 1
    assert f["n_negative"][0] == 2 and f["has_path"].tolist() == [1, 0, 0, 0, 0]
    assert f["n_hex"][2] == 2 and f["has_repeated_punct"][2] == 1 and f["n_allcaps"][2] == 1
    assert f["n_kv"][2] == 2 and f["word_count"][3] == 5  # café, crème, x, 0, Über
    assert f["uppercase_ratio"][3] == 1 / 14 and np.all(m[4, :-1] == 0)
    # an ASCII batch takes the ASCII patterns, a mixed one the Unicode ones: same numbers
    ascii_rows = [0, 1, 2, 4]
    alone = handcrafted_matrix([shapes[i] for i in ascii_rows])
    assert np.array_equal(alone, m[ascii_rows])


def test_sources_group_into_families_of_systems_and_unknown_ones_stand_alone():
    from logfit_dagster.core.line_protocol import SYSTEM_FAMILIES, family_of

    assert family_of("HDFS") == family_of("loghub_Hadoop") == family_of("synth_openstack")
    assert family_of("BGL") == family_of("KernelErrors") == "hpc_kernel"
    assert family_of("synth_javaapp") == family_of("WebServer") == "servers_apps"
    assert family_of("my_payments") == "my_payments"
    members = [m for _, ms in SYSTEM_FAMILIES.values() for m in ms]
    assert len(members) == len(set(members)), "a system belongs to one family"
    # every recorded label set has a family: the protocol holds out whole families
    recorded = [
        "Android",
        "Apache",
        "DatabaseErrors",
        "HDFS",
        "HPC",
        "Hadoop",
        "HealthApp",
        "JavaApp",
        "KernelErrors",
        "Linux",
        "Mac",
        "Microservices",
        "OpenSSH",
        "OpenStack",
        "Proxifier",
        "SecurityEvents",
        "Spark",
        "WebServer",
        "Windows",
        "Zookeeper",
    ]
    assert all(family_of(s) in SYSTEM_FAMILIES for s in recorded)


def test_the_baseline_counted_once_scores_as_the_plain_pipeline_fitted_per_fold():
    from logfit_dagster.core.line_protocol import baseline_out_of_fold, baseline_pipeline

    lines = labelled_lines()
    # words only some sources hold: a fold's vocabulary is its training lines' alone
    lines["raw"] = lines["raw"] + np.where(lines["source"] == "gamma", " café ÜBER", " node-7")
    folds = [{"alpha"}, {"beta", "gamma"}, {"delta"}]
    y = (lines["label"] == "LOOK").to_numpy()
    plain = np.zeros(len(lines))
    for held in folds:
        test = lines["source"].isin(held).to_numpy()
        model = baseline_pipeline().fit(lines["raw"][~test], y[~test])
        plain[test] = model.predict_proba(lines["raw"][test])[:, 1]
    for n_jobs in (1, 2):  # one count, and two chunks whose vocabularies are merged
        counted = baseline_out_of_fold(lines, folds, n_jobs=n_jobs)
        np.testing.assert_allclose(counted, plain, rtol=0, atol=1e-9)
    assert 0 < plain.min() < 0.5 < plain.max() < 1


def test_the_baseline_n_grams_counted_by_words_equal_the_vectorizer_counts():
    from sklearn.feature_extraction.text import CountVectorizer

    from logfit_dagster.core.line_protocol import char_ngram_counts

    raw = np.array(
        [
            "ERROR  disk\tfailed: Timeout ab a",  # runs of whitespace, short words, case
            "ΟΔΥΣΣΕΥΣ node-7 café",  # a final sigma lowercases by its neighbours
            "",
            "x",
            "ok ok ok   ",
            # characters beyond the basic plane, a word longer than any n-gram, a word of one
            "disk 💾 full 🔥🔥 blk_-1608999687919862906 é Z",
        ]
    )
    plain = CountVectorizer(analyzer="char_wb", ngram_range=(3, 5))
    expected = plain.fit_transform(raw)
    counted = char_ngram_counts(raw)
    assert counted.shape == expected.shape and counted.nnz == expected.nnz
    assert abs(counted - expected).max() == 0
    # a NUL inside a word (numpy cannot hold it as a character): the vectorizer counts
    with_nul = np.append(raw, "a\x00b ab\x00")
    expected = plain.fit_transform(with_nul)
    assert abs(char_ngram_counts(with_nul) - expected).max() == 0


@pytest.mark.parametrize("high", [3, 5, 7])
def test_a_word_s_n_grams_in_numpy_are_the_vectorizer_s_in_its_order(high):
    from sklearn.feature_extraction.text import CountVectorizer

    from logfit_dagster.core.line_protocol import word_ngram_counts

    words = ["a", "ab", "abc", "abcdefgh", "b", "ba", "é", "💾x", "x💾", "zz", "z"]
    plain = CountVectorizer(
        analyzer=CountVectorizer(analyzer="char_wb", ngram_range=(3, high)).build_analyzer()
    )
    expected = plain.fit_transform(words)
    counted = word_ngram_counts(words, 3, high)
    assert counted.shape == expected.shape and abs(counted - expected).max() == 0
    assert word_ngram_counts(["a\x00"], 3, high) is None
    assert word_ngram_counts(["\ud800"], 3, high) is None  # a lone surrogate


def test_selection_holds_out_whole_families_and_picks_its_threshold_on_them():
    lines = pd.concat(
        [
            labelled_lines().assign(source=lambda f, s=s: f["source"].map(s))
            for s in ({"alpha": "HDFS", "beta": "Hadoop", "gamma": "Apache", "delta": "WebServer"},)
        ]
    )
    rows = training_rows(lines)
    folds, protocol = source_folds(rows, 5)
    assert protocol == "leave-family-out" and len(folds) == 2  # two families, two folds
    for train, test in folds:
        from logfit_dagster.core.line_protocol import family_of

        assert not {family_of(s) for s in rows["source"].iloc[train]} & {
            family_of(s) for s in rows["source"].iloc[test]
        }
    result = select_model(rows, [SMALL])
    assert result.protocol == "leave-family-out" and 0 < result.threshold < 1
    # one family only: leave-source-out, said so
    same = labelled_lines().assign(
        source=lambda f: f["source"].map(
            {"alpha": "HDFS", "beta": "Hadoop", "gamma": "Spark", "delta": "Zookeeper"}
        )
    )
    assert source_folds(training_rows(same), 5)[1] == "leave-source-out"


def test_the_tfidf_family_reports_the_baseline_in_the_same_folds_and_ships_its_threshold(tmp_path):
    from logfit_dagster.core.models.base import train

    lines = labelled_lines().assign(
        source=lambda f: f["source"].map(
            {"alpha": "HDFS", "beta": "Linux", "gamma": "Apache", "delta": "Android"}
        )
    )
    result = train(
        "line_tfidf",
        lines,
        {"C": [1.0], "char_max_features": [5000], "word_max_features": [2000]},
        tmp_path / "m",
    )
    metrics, data = result.manifest.metrics, result.manifest.data
    assert data["evaluation"].startswith("leave-family-out, 4 folds")
    assert data["families"] == ["desktop_os", "distributed", "mobile", "servers_apps"]
    for key in ("baseline_cv_f1", "baseline_cv_average_precision", "baseline_threshold"):
        assert 0 <= metrics[key] <= 1
    scorer = LineScorer.load(tmp_path / "m" / "model.json")
    assert scorer.threshold == metrics["threshold"]
    # the folder keeps the Arrow twin under the manifest's digests, and loads from it
    assert {"model.json", "model.arrow"} <= set(result.manifest.files)
    loaded = load_line_scorer(tmp_path / "m")
    assert loaded.threshold == scorer.threshold
    shapes = training_rows(lines)["shape"].tolist()
    assert np.array_equal(loaded.score_shapes(shapes), scorer.score_shapes(shapes))
    per_source = json.loads((tmp_path / "m" / "per_source.json").read_text())
    assert {"baseline_f1", "f1"} <= set(per_source[0])


def test_every_registered_family_keeps_the_typed_contract(monkeypatch):
    import types

    from logfit_dagster.core.models import base

    for name in base.FAMILIES:
        module = base.family_module(name)
        assert isinstance(module, base.ModelFamily) and module.FAMILY == name
    # a module that lacks part of the contract is refused, naming what is missing
    broken = types.ModuleType("broken_family")
    broken.FAMILY, broken.FORMAT_VERSION = "broken", 1
    broken.train = lambda data, params, folder, progress=None: None
    monkeypatch.setitem(sys.modules, "broken_family", broken)
    monkeypatch.setitem(base.FAMILIES, "broken", "broken_family")
    with pytest.raises(
        ValueError,
        match=r"does not keep the model-family contract \(missing \['load', 'feature_version'\]",
    ):
        base.family_module("broken")


def test_classify_scores_without_importing_scikit_learn_or_dagster(tmp_path):
    """``logfit classify`` starts fast: loading a model folder and scoring a file needs numpy and
    pyarrow (which loads pandas for its arrays' conversions), never scikit-learn, scipy, dagster
    or torch, which take seconds to import."""
    from logfit_dagster.core.models.base import train

    lines = labelled_lines().assign(
        source=lambda f: f["source"].map(
            {"alpha": "HDFS", "beta": "Linux", "gamma": "Apache", "delta": "Android"}
        )
    )
    train("line_tfidf", lines, SMALL_GRID, tmp_path / "model")
    log = tmp_path / "app.log"
    log.write_text("".join(f"{raw}\n" for raw in lines["raw"]))
    out = tmp_path / "scored.jsonl"
    probe = (
        "import sys, json\n"
        "from logfit_dagster.cli import main\n"
        f"code = main(['classify', {str(log)!r}, '--model', {str(tmp_path / 'model')!r},"
        f" '--output', {str(out)!r}])\n"
        "heavy = sorted(m for m in ('sklearn', 'scipy', 'dagster', 'torch')"
        " if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}, done.stderr
    assert sum(1 for _ in out.open()) == len(lines)


def test_a_session_threshold_sits_in_the_middle_of_the_dev_gap_in_log_odds():
    from logfit_dagster.core.session_model import best_threshold

    y = np.array([0, 0, 0, 1, 1])
    # the best F1 flags 0.9 and 0.8; the highest unflagged dev score is 0.2
    threshold = best_threshold(y, np.array([0.05, 0.1, 0.2, 0.8, 0.9]))
    assert threshold == pytest.approx(0.5)
    # log-odds, not the plain middle: 0.01 (odds 1/99) and 0.5 (odds 1) meet at odds
    # sqrt(1/99), a probability of 0.091, not 0.255
    odds = np.sqrt(1 / 99)
    assert best_threshold(y, np.array([0.001, 0.002, 0.01, 0.5, 0.7])) == pytest.approx(
        odds / (1 + odds)
    )
    # nothing below the lowest flagged score (every dev session flagged): that score
    assert best_threshold(np.array([1, 1, 0]), np.array([0.9, 0.9, 0.9])) == pytest.approx(0.9)
    # one class on dev: 0.5
    assert best_threshold(np.array([0, 0]), np.array([0.1, 0.7])) == 0.5
