"""Sessions, ground truth and splits on tiny hand-written frames."""

import pandas as pd
import pytest

from logfit_dagster.core.errors import LogInputError
from logfit_dagster.core.ground_truth import collect_ground_truth
from logfit_dagster.core.registry import GroundTruthSpec, SessionSpec
from logfit_dagster.core.sessions import build_sessions, session_keys
from logfit_dagster.core.splits import split_sessions

PARSED = pd.DataFrame(
    {
        "line_number": [1, 2, 3, 4, 5],
        "date": ["081109"] * 5,
        "time": ["203518", "203519", "203800", "204100", "210000"],
        "level": ["INFO", "INFO", "WARN", "INFO", "INFO"],
        "component": ["dfs.A", "dfs.B", "dfs.A", "dfs.C", "dfs.A"],
        "content": [
            "Receiving block blk_1 src",
            "Receiving block blk_-2 src",
            "Failed to transfer blk_1",
            "ask to delete blk_1 blk_-2",
            "no block here",
        ],
        "template_id": [1, 1, 2, 3, 4],
        "label": ["-", "-", "KERNDTLB", "-", "-"],
    }
)


def test_block_sessions_follow_every_id_a_line_names():
    sessions = build_sessions(PARSED, SessionSpec(by="block_id"), "HDFS")
    by_id = sessions.set_index("session_id")
    assert list(sessions["session_id"]) == ["blk_1", "blk_-2"]
    assert by_id.loc["blk_1", "line_numbers"] == [1, 3, 4]
    assert by_id.loc["blk_-2", "template_ids"] == [1, 3]
    assert by_id.loc["blk_1", "text"].splitlines()[1] == "WARN dfs.A: Failed to transfer blk_1"


def test_fixed_windows_cover_every_line_once():
    keys = session_keys(PARSED, SessionSpec(by="window", size=2), "HDFS")
    assert list(keys["session_id"]) == ["w0000000", "w0000000", "w0000001", "w0000001", "w0000002"]


def test_time_windows_use_the_format_timestamp():
    keys = session_keys(PARSED, SessionSpec(by="time_window", seconds=300), "HDFS")
    assert keys["session_id"].nunique() == 3  # 20:35-20:40, 20:40-20:45, 21:00-21:05


def test_time_windows_need_a_timestamp_rule():
    with pytest.raises(Exception, match="no timestamp rule"):
        session_keys(PARSED, SessionSpec(by="time_window"), "<A> <Content>")


def _keys():
    return session_keys(PARSED, SessionSpec(by="block_id"), "HDFS")


def test_hdfs_block_labels_with_unlisted_blocks_normal(tmp_path):
    path = tmp_path / "anomalous.csv"
    path.write_text("BlockId,Label\nblk_1,Anomaly\n")
    truth = collect_ground_truth(
        GroundTruthSpec("hdfs_blocks", str(path), unlisted="normal"), PARSED, _keys()
    )
    assert dict(zip(truth.sessions["session_id"], truth.sessions["label"], strict=True)) == {
        "blk_1": 1,
        "blk_-2": 0,
    }
    lines = dict(zip(truth.lines["line_number"], truth.lines["label"], strict=True))
    assert lines == {1: 1, 2: 0, 3: 1, 4: 1}


def test_hdfs_block_labels_leave_unlisted_unknown_by_default(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("BlockId,Label\nblk_1,Normal\n")
    truth = collect_ground_truth(GroundTruthSpec("hdfs_blocks", str(path)), PARSED, _keys())
    labels = dict(zip(truth.sessions["session_id"], truth.sessions["label"], strict=True))
    assert labels["blk_1"] == 0 and pd.isna(labels["blk_-2"])


def test_bad_label_file_names_file_and_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("BlockId,Label\nblk_1,Normal\nblk_-2,Maybe\n")
    with pytest.raises(LogInputError, match=r"labels.csv: line 3: label 'Maybe'"):
        collect_ground_truth(GroundTruthSpec("hdfs_blocks", str(path)), PARSED, _keys())


def test_alert_field_labels_lines_and_windows():
    keys = session_keys(PARSED, SessionSpec(by="window", size=2), "BGL")
    truth = collect_ground_truth(GroundTruthSpec("alert_field"), PARSED, keys)
    assert list(truth.lines["label"]) == [0, 0, 1, 0, 0]
    assert list(truth.lines["detail"])[2] == "KERNDTLB"
    assert list(truth.sessions["label"]) == [0, 1, 0]


def test_no_provider_makes_nothing_up():
    truth = collect_ground_truth(GroundTruthSpec("none"), PARSED, _keys())
    assert truth.lines.empty and truth.sessions.empty and not truth.has_labels


def _sessions(n=200, anomalous_every=10):
    return pd.DataFrame(
        {
            "session_id": [f"s{i}" for i in range(n)],
            "first_line": range(n),
            "label": pd.array([int(i % anomalous_every == 0) for i in range(n)], dtype="Int8"),
        }
    )


def test_stratified_split_is_disjoint_balanced_and_seeded():
    sessions = _sessions()
    split = split_sessions(sessions, seed=7)
    assert split["session_id"].is_unique and len(split) == len(sessions)
    counts = split.groupby(["split", "label"]).size()
    assert counts[("train", 1)] == 16 and counts[("dev", 1)] == 2 and counts[("test", 1)] == 2
    assert counts[("train", 0)] == 144
    assert split.equals(split_sessions(sessions, seed=7))
    assert not split.equals(split_sessions(sessions, seed=8))


def test_chronological_split_tests_on_the_latest_sessions():
    split = split_sessions(_sessions(), method="chronological")
    assert (
        split[split["split"] == "test"]["first_line"].min()
        > split[split["split"] == "train"]["first_line"].max()
    )


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        split_sessions(_sessions(), fractions=(0.8, 0.1, 0.2))


def test_repeated_content_is_counted_per_split_and_anomalies_equal_to_normal_ones_named():
    from logfit_dagster.core.splits import repeated_content

    sessions = pd.DataFrame(
        {
            "session_id": list("abcdef"),
            "template_ids": [[1, 2], [1, 2], [3], [1, 2], [9], [3]],
        }
    )
    splits = pd.DataFrame(
        {
            "session_id": list("abcdef"),
            "split": ["train", "dev", "dev", "test", "test", "test"],
            "label": [0, 0, 0, 1, 1, 1],
        }
    )
    counts = repeated_content(sessions, splits)
    # b repeats a (train); d and f repeat a and c, normal sessions: the events cannot tell them
    assert counts["dev_seen_in_train"] == 1 and counts["test_seen_in_train"] == 1
    assert counts["anomalous"] == 3 and counts["anomalous_equal_to_normal"] == 2


def test_sequence_keys_are_equal_exactly_for_equal_event_sequences_in_any_batch():
    """Keys are built in Arrow per batch: equal sequences match across batches and chunk
    boundaries; sequences that differ only in how their ids' digits group do not."""
    import pyarrow as pa

    from logfit_dagster.core.splits import repeated_content, sequence_keys

    sequences = [[1, 2], [1, 23], [12, 3], [], [1, 2], [3], [123]]
    whole = sequence_keys(pa.array(sequences, pa.list_(pa.int32())))
    assert whole[0] == whole[4]  # the same events
    assert len(set(whole.tolist())) == 6  # every other pair differs, "1 23" from "12 3"
    chunked = pa.chunked_array(
        [
            pa.array(sequences[:3], pa.list_(pa.int32())),
            pa.array(sequences[3:], pa.list_(pa.int32())),
        ]
    )
    assert (sequence_keys(chunked) == whole).all()
    assert (sequence_keys(sequences) == whole).all()
    # the check reads keys as it reads the events themselves
    sessions = pd.DataFrame({"session_id": list("abcdefg"), "template_ids": sequences})
    splits = pd.DataFrame(
        {"session_id": list("abcdefg"), "split": ["train"] * 4 + ["test"] * 3, "label": [0] * 7}
    )
    keyed = pd.DataFrame({"session_id": sessions["session_id"], "key": whole})
    assert repeated_content(keyed, splits) == repeated_content(sessions, splits)
    assert repeated_content(keyed, splits)["test_seen_in_train"] == 1


def _truth_table(tmp_path, lines, labels):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from logfit_dagster.core.tables import StoredTable

    path = tmp_path / "lines.parquet"
    table = pa.table(
        {"line_number": pa.array(lines, pa.int64()), "label": pa.array(labels, pa.int8())}
    )
    pq.write_table(table, path, row_group_size=7)
    return StoredTable(path)


def test_line_truth_read_in_order_holds_a_window_and_answers_as_a_whole_lookup(tmp_path):
    import numpy as np

    from logfit_dagster.core.ground_truth import LineTruth

    rng = np.random.default_rng(0)
    lines = np.sort(rng.choice(np.arange(1, 400), size=150, replace=False))  # gaps: unlabelled
    labels = [None if i % 11 == 0 else int(rng.integers(0, 2)) for i in range(len(lines))]
    expected = dict(zip(lines.tolist(), [-1 if v is None else v for v in labels], strict=True))
    truth = LineTruth(_truth_table(tmp_path, lines, labels), rows=10)
    held = []
    for start in range(1, 420, 25):  # the labels' batches, in line order, past the last line
        asked = np.arange(start, start + 25)
        got = truth.codes(asked)
        assert got.tolist() == [expected.get(n, -1) for n in asked.tolist()]
        held.append(len(truth._lines))
    # never the whole table: at most the batches that reach the numbers asked
    assert max(held) <= 25 + 10


def test_line_truth_asked_out_of_order_reads_the_table_once_and_answers_the_same(tmp_path):
    import numpy as np

    from logfit_dagster.core.ground_truth import LineTruth

    lines, labels = [2, 4, 6, 8, 10, 12], [0, 1, None, 1, 0, 1]
    truth = LineTruth(_truth_table(tmp_path, lines, labels), rows=2)
    assert truth.codes(np.array([10, 11, 12])).tolist() == [0, -1, 1]
    # behind what was asked: the whole table, then any order
    assert truth.codes(np.array([8, 2, 4, 6])).tolist() == [1, 0, 1, -1]
    assert truth.codes(np.array([12, 1])).tolist() == [1, -1]
    assert truth.codes(np.array([], dtype=np.int64)).tolist() == []
