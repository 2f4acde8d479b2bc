"""Scoring lines with an exported LOOK/SKIP model: numpy and pyarrow only, so that
``logfit classify`` starts in a fraction of a second (no scikit-learn, scipy or pandas import).

:class:`LineScorer` reproduces the fitted scikit-learn pipeline's probabilities from its export
(:func:`logfit_dagster.core.line_model.export_model`): the same n-grams as scikit-learn's
analyzers, sublinear tf, idf and l2 norm as ``TfidfVectorizer(sublinear_tf=True)``; training
checks the parity on every model it exports. The export is JSON (portable, readable) and, beside
it, in a model folder, the same arrays in an Arrow IPC file (``write_binary``), which loads
faster: columns of strings and floats, nothing that runs code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from logfit_dagster.core.errors import ModelFileError
from logfit_dagster.core.line_features import (
    FEATURE_VERSION,
    MAX_SHAPE_CHARS,
    handcrafted_matrix,
    normalize_column,
    shape_column,
)

MODEL_FORMAT = "logfit-look-skip-v1"
#: the Arrow IPC twin of a JSON export: ``model.json`` -> ``model.arrow``
BINARY_SUFFIX = ".arrow"

_WHITE_SPACES = re.compile(r"\s\s+")


def char_ngrams(text: str, min_n: int, max_n: int) -> list[str]:
    """scikit-learn's ``analyzer="char"`` n-grams of a lower-cased text."""
    text = _WHITE_SPACES.sub(" ", text.lower())
    n_chars = len(text)
    grams = list(text) if min_n == 1 else []
    for n in range(max(min_n, 2) if min_n == 1 else min_n, min(max_n + 1, n_chars + 1)):
        grams.extend(text[i : i + n] for i in range(n_chars - n + 1))
    return grams


def word_ngrams(text: str, token: re.Pattern, min_n: int, max_n: int) -> list[str]:
    """scikit-learn's word n-grams (``token_pattern``, lower-cased, joined by a space)."""
    tokens = token.findall(text.lower())
    if max_n == 1:
        return tokens
    grams = list(tokens) if min_n == 1 else []
    count = len(tokens)
    for n in range(max(min_n, 2) if min_n == 1 else min_n, min(max_n + 1, count + 1)):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(count - n + 1))
    return grams


def _code_points(text: str) -> np.ndarray:
    """The code points of a text, one uint32 each (lone surrogates kept as they are)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


# Texts a packed char block scores per numpy pass: bounds its arrays (about 50 MB).
PACKED_CHARS = 1 << 20


class _PackedCharNgrams:
    """A char n-gram vocabulary as sorted int64 keys, so that many texts are looked up in numpy.

    Each char of the vocabulary's alphabet gets a code 1..A; an n-gram's key packs its codes
    ``bits`` apart, first char lowest. The key is the n-gram, not a hash of it: two n-grams
    share a key only if they are equal, and an n-gram holding a char outside the alphabet is in
    no vocabulary. :meth:`build` gives None when the keys would not fit 63 bits (an alphabet of
    over 1,023 chars at 6-grams), and the block scores in Python instead.
    """

    def __init__(self, alphabet: np.ndarray, bits: int, keys: np.ndarray, ids: np.ndarray):
        self.alphabet, self.bits, self.keys, self.ids = alphabet, bits, keys, ids

    @classmethod
    def build(cls, terms: list[str], max_n: int) -> _PackedCharNgrams | None:
        if not terms:
            return None
        points = _code_points("".join(terms))
        alphabet = np.unique(points)
        bits = len(alphabet).bit_length()  # codes 1..A, 0 for a char outside the alphabet
        if bits * max_n > 63:
            return None
        codes = np.searchsorted(alphabet, points).astype(np.int64) + 1
        lengths = np.fromiter(map(len, terms), dtype=np.int64, count=len(terms))
        starts = np.cumsum(lengths) - lengths
        offset = np.arange(len(codes), dtype=np.int64) - np.repeat(starts, lengths)
        keys = np.add.reduceat(codes << (bits * offset), starts)
        order = np.argsort(keys, kind="stable")
        return cls(alphabet, bits, keys[order], order.astype(np.int64))

    def _codes(self, text: str) -> np.ndarray:
        points = _code_points(text)
        at = np.minimum(np.searchsorted(self.alphabet, points), len(self.alphabet) - 1)
        return np.where(self.alphabet[at] == points, at + 1, 0).astype(np.int64)

    def matches(self, texts: list[str], min_n: int, max_n: int) -> tuple[np.ndarray, np.ndarray]:
        """(row, vocabulary index) of every n-gram occurrence of the texts that the
        vocabulary holds, n from min_n to max_n: what :func:`char_ngrams` yields, looked up."""
        texts = [_WHITE_SPACES.sub(" ", text.lower()) for text in texts]
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        codes = self._codes("".join(texts))
        total = len(codes)
        # where each char's text ends: an n-gram from i is whole if i + n <= end
        room = np.repeat(np.cumsum(lengths), lengths) - np.arange(total, dtype=np.int64)
        row = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        key = np.zeros(total, dtype=np.int64)
        known = np.ones(total, dtype=bool)
        rows, ids = [], []
        for n in range(1, max_n + 1):
            starts = total - n + 1  # n-grams start at 0 .. total - n
            if starts <= 0:
                break
            key[:starts] |= codes[n - 1 :] << (self.bits * (n - 1))
            known[:starts] &= codes[n - 1 :] != 0
            if n < min_n:
                continue
            whole = np.flatnonzero(known[:starts] & (room[:starts] >= n))
            found = key[whole]
            at = np.minimum(np.searchsorted(self.keys, found), len(self.keys) - 1)
            hit = self.keys[at] == found
            rows.append(row[whole[hit]])
            ids.append(self.ids[at[hit]])
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows), np.concatenate(ids)


class _TfidfPart:
    """One TF-IDF block of an exported model, scored for many texts at once."""

    def __init__(self, spec: dict, token_pattern: str | None = None):
        self.vocabulary: dict[str, int] = spec["vocabulary"]
        self.idf = np.asarray(spec["idf"], dtype=np.float64)
        self.coef = np.asarray(spec["coef"], dtype=np.float64)
        self.min_n, self.max_n = spec["ngram_range"]
        self.token = re.compile(token_pattern) if token_pattern else None
        self.packed = None
        # chars of text per numpy pass of the packed lookup
        self.pass_chars = PACKED_CHARS
        if self.token is None:
            terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
            self.packed = _PackedCharNgrams.build(terms, self.max_n)

    def _grams(self, text: str) -> list[str]:
        if self.token is None:
            return char_ngrams(text, self.min_n, self.max_n)
        return word_ngrams(text, self.token, self.min_n, self.max_n)

    def _matches(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row, vocabulary index) of every known n-gram occurrence."""
        if self.packed is not None:
            rows, ids, size, start = [], [], 0, 0
            for end, text in enumerate(texts, start=1):
                size += len(text)
                if size >= self.pass_chars or end == len(texts):
                    row, index = self.packed.matches(texts[start:end], self.min_n, self.max_n)
                    rows.append(row + start)
                    ids.append(index)
                    size, start = 0, end
            if rows:
                return np.concatenate(rows), np.concatenate(ids)
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        get = self.vocabulary.get
        ids, lengths = [], np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            known = [i for i in map(get, self._grams(text)) if i is not None]
            ids.extend(known)
            lengths[row] = len(known)
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        return rows, np.asarray(ids, dtype=np.int64)

    def score_many(self, texts: list[str]) -> np.ndarray:
        """coef · l2-normalized sublinear tf-idf of each text.

        The n-grams are those scikit-learn's analyzer gives over the model's vocabulary; tf,
        idf and the norm follow ``TfidfVectorizer(sublinear_tf=True)``. A text with no known
        n-gram scores 0.
        """
        out = np.zeros(len(texts), dtype=np.float64)
        rows, ids = self._matches(texts)
        if not len(ids):
            return out
        pair, counts = np.unique(rows * len(self.idf) + ids, return_counts=True)
        row, index = np.divmod(pair, len(self.idf))
        weight = (1.0 + np.log(counts)) * self.idf[index]
        dots = np.bincount(row, weights=weight * self.coef[index], minlength=len(texts))
        norms = np.sqrt(np.bincount(row, weights=weight * weight, minlength=len(texts)))
        np.divide(dots, norms, out=out, where=norms > 0)
        return out


# Shapes whose probability a scorer keeps: a week of logs whose lines mostly have new shapes
# (numbers in odd places) would otherwise grow the cache without end. Past the bound the
# oldest half is dropped; a dropped shape seen again is scored again, with the same result.
MAX_CACHED_SHAPES = 500_000
# New shapes are scored this many at a time (bounds the sparse matrices of one batch).
SCORE_BATCH = 20_000


class LineScorer:
    """Scores lines from an exported model: the same probabilities as the sklearn pipeline."""

    def __init__(self, spec: dict, source: str = "<memory>", max_cached: int = MAX_CACHED_SHAPES):
        if spec.get("format") != MODEL_FORMAT:
            raise ModelFileError(
                f"{source}: not a logfit LOOK/SKIP model (format {spec.get('format')!r})"
            )
        if spec.get("feature_version") != FEATURE_VERSION:
            raise ModelFileError(
                f"{source}: made for features {spec.get('feature_version')!r}, this logfit computes "
                f"{FEATURE_VERSION!r}: retrain look_skip_model"
            )
        try:
            self.word = _TfidfPart(spec["word"], token_pattern=spec["word"]["token_pattern"])
            self.char = _TfidfPart(spec["char"])
            self.hand_mean = np.asarray(spec["hand"]["mean"], dtype=np.float64)
            self.hand_scale = np.asarray(spec["hand"]["scale"], dtype=np.float64)
            self.hand_coef = np.asarray(spec["hand"]["coef"], dtype=np.float64)
            self.intercept = float(spec["intercept"])
            self.threshold = float(spec.get("threshold", 0.5))
            # the cut the model was trained with: a line's features come from this many chars
            self.max_chars = int(spec.get("max_shape_chars", MAX_SHAPE_CHARS))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(
                f"{source}: model file is incomplete or corrupt ({exc!r})"
            ) from None
        self.spec = spec
        self._cache: dict[str, float] = {}
        self.max_cached = max(1, max_cached)
        self._scored = 0

    @classmethod
    def load(cls, path: Path) -> LineScorer:
        """The model of a JSON export, or of its Arrow twin (a ``.arrow`` path)."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        if path.suffix == BINARY_SUFFIX:
            return cls(read_binary(path), str(path))
        try:
            spec = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{path}: model file is corrupt ({exc})") from None
        if not isinstance(spec, dict):
            raise ModelFileError(f"{path}: model file is corrupt (not a JSON object)")
        return cls(spec, str(path))

    def _logits(self, shapes: list[str]) -> np.ndarray:
        """The model's logit of each shape, in one batch of sparse products."""
        normalized = normalize_column(pa.array(shapes, pa.string())).to_pylist()
        hand = (handcrafted_matrix(shapes) - self.hand_mean) / self.hand_scale
        return (
            self.word.score_many(normalized)
            + self.char.score_many(shapes)
            + hand @ self.hand_coef
            + self.intercept
        )

    @property
    def shapes_scored(self) -> int:
        """Shapes this scorer has computed (a shape dropped from the bounded cache and seen
        again counts twice)."""
        return self._scored

    @property
    def shapes_cached(self) -> int:
        return len(self._cache)

    def score_shapes(self, shapes: list[str]) -> np.ndarray:
        """LOOK probability of each shape; shapes seen before come from a bounded cache."""
        distinct = list(dict.fromkeys(shapes))
        todo = [s for s in distinct if s not in self._cache]
        found = {s: self._cache[s] for s in distinct if s in self._cache}
        for start in range(0, len(todo), SCORE_BATCH):
            batch = todo[start : start + SCORE_BATCH]
            probability = 1.0 / (1.0 + np.exp(-self._logits(batch)))
            found.update(zip(batch, probability.tolist(), strict=True))
        if todo:
            self._scored += len(todo)
            self._cache.update((s, found[s]) for s in todo)
            if len(self._cache) > self.max_cached:  # keep the newest half of the bound
                newest = list(self._cache.items())[-max(1, self.max_cached // 2) :]
                self._cache = dict(newest)
        return np.fromiter((found[s] for s in shapes), dtype=np.float64, count=len(shapes))

    def score(self, lines: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """The model-family contract's name for :meth:`score_lines`."""
        return self.score_lines(lines)

    def score_lines(self, lines: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """LOOK probability of every line, each distinct shape scored once."""
        if isinstance(lines, list):
            lines = pa.array(lines, pa.string())
        shapes, index = shape_column(lines, self.max_chars)
        return self.score_shapes(shapes.to_pylist())[index]


# -- the binary twin of a JSON export ----------------------------------------------------------

_PARTS = ("word", "char")


def write_binary(spec: dict, path: Path) -> None:
    """The export's arrays as an Arrow IPC file: one row per n-gram (``part``, ``term``,
    ``idf``, ``coef``), everything else (hand-made features, intercept, threshold, params) as
    JSON in the schema's metadata. A model folder keeps it beside ``model.json``, both under the
    manifest's digests, so the two are always of one training."""
    from logfit_dagster.core.reading import atomic_path

    parts, terms, idf, coef = [], [], [], []
    for part in _PARTS:
        block = spec[part]
        ordered = sorted(block["vocabulary"].items(), key=lambda kv: kv[1])
        if [i for _, i in ordered] != list(range(len(ordered))):
            raise ModelFileError(f"{part} vocabulary indices are not 0..n-1: cannot write {path}")
        parts += [part] * len(ordered)
        terms += [t for t, _ in ordered]
        idf += list(block["idf"])
        coef += list(block["coef"])
    rest = {k: v for k, v in spec.items() if k not in _PARTS}
    rest["_parts"] = {
        part: {k: v for k, v in spec[part].items() if k not in ("vocabulary", "idf", "coef")}
        for part in _PARTS
    }
    table = pa.table(
        {
            "part": pa.array(parts, pa.string()).dictionary_encode(),
            "term": pa.array(terms, pa.string()),
            "idf": pa.array(idf, pa.float64()),
            "coef": pa.array(coef, pa.float64()),
        }
    ).replace_schema_metadata({"logfit": json.dumps(rest)})
    with atomic_path(Path(path)) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def read_binary(path: Path) -> dict:
    """The export an Arrow twin holds, as the JSON export's dict (arrays as numpy)."""
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        rest = json.loads(table.schema.metadata[b"logfit"])
    except (pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: binary model file is corrupt ({exc})") from None
    parts = rest.pop("_parts")
    part = table.column("part").combine_chunks()
    codes = part.indices.to_numpy(zero_copy_only=False)
    names = part.dictionary.to_pylist()
    terms = table.column("term").to_pylist()
    idf = table.column("idf").to_numpy()
    coef = table.column("coef").to_numpy()
    spec = dict(rest)
    for code, name in enumerate(names):
        rows = np.flatnonzero(codes == code)
        spec[name] = {
            **parts[name],
            "vocabulary": {terms[i]: j for j, i in enumerate(rows.tolist())},
            "idf": idf[rows],
            "coef": coef[rows],
        }
    return spec
