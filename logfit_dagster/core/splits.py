"""Train/dev/test splits of sessions: stratified by label with a fixed seed, or chronological."""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLIT_NAMES = ("train", "dev", "test")


def _cut(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    n_train = int(round(n * fractions[0]))
    n_dev = int(round(n * (fractions[0] + fractions[1]))) - n_train
    return n_train, n_dev


def split_sessions(
    sessions: pd.DataFrame,
    method: str = "stratified",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 42,
) -> pd.DataFrame:
    """Assign every session to exactly one split.

    Args:
        sessions: ``session_id``, ``first_line`` and ``label`` (nullable) per session.
        method: ``stratified`` (per label group, shuffled with ``seed``) or ``chronological``
            (by first line: train on the past, test on the future).
        fractions: train, dev and test fractions; they must sum to 1.
        seed: the shuffle seed.

    Returns:
        ``session_id``, ``split``, ``label``, ``first_line``, one row per session.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    if method not in ("stratified", "chronological"):
        raise ValueError(f"unknown split method {method!r}: use 'stratified' or 'chronological'")
    frame = sessions[["session_id", "first_line", "label"]].drop_duplicates("session_id")
    frame = frame.reset_index(drop=True)
    split = np.empty(len(frame), dtype=object)
    if method == "chronological":
        order = np.argsort(frame["first_line"].to_numpy(), kind="stable")
        n_train, n_dev = _cut(len(order), fractions)
        split[order[:n_train]] = "train"
        split[order[n_train : n_train + n_dev]] = "dev"
        split[order[n_train + n_dev :]] = "test"
    else:
        rng = np.random.default_rng(seed)
        strata = frame["label"].astype("string").fillna("unknown")
        for value in sorted(strata.unique()):
            members = np.flatnonzero((strata == value).to_numpy())
            members = members[rng.permutation(len(members))]
            n_train, n_dev = _cut(len(members), fractions)
            split[members[:n_train]] = "train"
            split[members[n_train : n_train + n_dev]] = "dev"
            split[members[n_train + n_dev :]] = "test"
    frame["split"] = split
    return frame[["session_id", "split", "label", "first_line"]]


def sequence_keys(template_ids) -> np.ndarray:
    """A 64-bit key per session of its event sequence (an Arrow list array or chunked array,
    or a sequence of lists): equal sequences get equal keys, unequal ones differ but with a
    chance of 2^-64 a pair. Built in Arrow and numpy, so a batch of sessions never becomes a
    Python list per session."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(template_ids, pa.Array | pa.ChunkedArray):
        template_ids = pa.array(list(template_ids), pa.list_(pa.int64()))
    text = pc.binary_join(pc.cast(template_ids, pa.list_(pa.string())), " ")
    values = np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)
    return pd.util.hash_array(values, categorize=False)


def repeated_content(sessions: pd.DataFrame, splits: pd.DataFrame) -> dict:
    """What identical event sequences mean for a split (a property of the data, not a leak).

    Args:
        sessions: ``session_id`` and ``key`` (:func:`sequence_keys` of the session's events), or
            ``template_ids`` (the events themselves).
        splits: ``session_id``, ``split`` and ``label``.

    Returns:
        ``dev_seen_in_train`` and ``test_seen_in_train``: sessions whose sequence a training
        session has too; ``anomalous_equal_to_normal``: labelled anomalous sessions whose sequence
        a normal session has too (nothing in the events can tell them apart), out of
        ``anomalous``.
    """
    if "key" not in sessions:
        sessions = pd.DataFrame(
            {"session_id": sessions["session_id"], "key": sequence_keys(sessions["template_ids"])}
        )
    frame = sessions[["session_id", "key"]].merge(
        splits[["session_id", "split", "label"]], on="session_id", how="inner"
    )
    key = frame["key"]
    train = key[frame["split"] == "train"].unique()
    normal = key[frame["label"] == 0].unique()
    anomalous = frame["label"] == 1
    return {
        "dev_seen_in_train": int(key[frame["split"] == "dev"].isin(train).sum()),
        "test_seen_in_train": int(key[frame["split"] == "test"].isin(train).sum()),
        "dev_sessions": int((frame["split"] == "dev").sum()),
        "test_sessions": int((frame["split"] == "test").sum()),
        "anomalous": int(anomalous.sum()),
        "anomalous_equal_to_normal": int(key[anomalous].isin(normal).sum()),
    }
