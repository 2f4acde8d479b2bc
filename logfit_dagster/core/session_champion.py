"""The session champion of a source: one model across the session families, chosen on dev.

Candidates are every scoring rule a family trained for the source: each count-vector
classifier (threshold with the best dev F1) and each template_lm scoring method (threshold from
normal dev sessions alone). The choice uses the dev split, never test:

1. the highest dev average precision: it ranks without a threshold, so the supervised models'
   thresholds (fitted on dev) do not flatter them;
2. within ``AP_TIE`` of the best, the highest dev F1 at the candidate's own threshold;
3. then the cheaper family (count vectors before the transformer), then the name.

Without dev anomalies nothing can be measured, and the choice says so:

- a source with no labels at all gets the count-vector family's IsolationForest (the only family
  that has one there). The template model scores every test session there too, labelled or
  not, but it is trained on every session, anomalies included, and its threshold assumes normal
  dev sessions: on DeepLog's HDFS sessions with the labels hidden it flagged 0 of 15 test
  anomalies where the IsolationForest caught 12 (F1 0.35; ``benchmarks/deeplog_hdfs.py``);
- a labelled source without dev anomalies gets the label-free template model (max NLL): it was
  trained on normal sessions alone, and its thresholds need no labels.

The champion is stored as a copy of the chosen family's model folder with ``champion.json``
(what was chosen, on what, and why) and ``templates.json`` (the source's template id -> text),
so that ``logfit sessions`` scores a new file's sessions by template text with exactly the
model the summary names.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from logfit_dagster.core.errors import ModelFileError
from logfit_dagster.core.models.base import SESSION_CANDIDATE_COLUMNS
from logfit_dagster.core.scores import confusion_counts, rates

AP_TIE = 0.005
# the order in which families win a tie: the cheaper to run first
FAMILY_ORDER = ("session_counts", "template_lm")
CHAMPION_FILE = "champion.json"
TEMPLATES_FILE = "templates.json"
# the candidate frame both session families hand to the champion
CANDIDATE_COLUMNS = SESSION_CANDIDATE_COLUMNS


@dataclass
class Candidate:
    family: str
    model: str  # the count-vector kind or the template_lm method
    threshold: float
    dev: dict
    test: dict

    @property
    def name(self) -> str:
        return f"{self.family}:{self.model}"


@dataclass
class Choice:
    champion: Candidate
    why: str
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.champion.name

    def table(self) -> pd.DataFrame:
        """Every candidate's dev and test figures, the champion marked."""
        return pd.DataFrame(
            [
                {
                    "candidate": c.name,
                    "dev_ap": c.dev.get("average_precision", math.nan),
                    "dev_f1": c.dev.get("f1", math.nan),
                    "threshold": c.threshold,
                    **{f"test_{k}": c.test.get(k, math.nan) for k in TEST_KEYS},
                    "champion": c.name == self.name,
                }
                for c in self.candidates
            ]
        )


TEST_KEYS = ("precision", "recall", "f1", "false_positive_rate", "anomalous", "normal", "tp", "fp")


def figures_at_threshold(label: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict:
    """Precision, recall, F1, the false-alarm rate on normal sessions and the counts they rest
    on (0, never NaN, where a count is 0)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(label, dtype=int)
    tp, fp, fn, tn = (int(c) for c in confusion_counts(y, np.asarray(flagged, dtype=int)))
    return {
        **rates(tp, fp, fn, tn, empty=0.0),
        "false_positive_rate": fp / (fp + tn) if fp + tn else 0.0,
        "average_precision": float(average_precision_score(y, score))
        if 0 < y.sum() < len(y)
        else math.nan,
        "anomalous": int(y.sum()),
        "normal": int(len(y) - y.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def candidates_from_frame(frame: pd.DataFrame) -> list[Candidate]:
    """One candidate per family and model of a :data:`CANDIDATE_COLUMNS` frame (test sessions
    with their scores, flags and the model's dev figures)."""
    out = []
    if frame is None or frame.empty:
        return out
    labelled = frame[frame["label"].notna()]
    for (family, model), group in frame.groupby(["family", "model"], sort=True):
        rows = labelled[(labelled["family"] == family) & (labelled["model"] == model)]
        out.append(
            Candidate(
                family=str(family),
                model=str(model),
                threshold=float(group["threshold"].iloc[0]),
                dev={
                    "average_precision": _float(group["dev_average_precision"].iloc[0]),
                    "f1": _float(group["dev_f1"].iloc[0]),
                },
                test=figures_at_threshold(
                    rows["label"].to_numpy(),
                    rows["score"].to_numpy(dtype=float),
                    rows["flagged"].astype(bool).to_numpy(),
                )
                if len(rows)
                else {},
            )
        )
    return out


def _float(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def choose(candidates: list[Candidate]) -> Choice:
    """The champion among ``candidates`` by the rule of this module's docstring."""
    if not candidates:
        raise ValueError("no session model to choose from")

    def finite(value) -> float:
        return value if isinstance(value, int | float) and math.isfinite(value) else -1.0

    measured = [c for c in candidates if finite(c.dev.get("average_precision")) >= 0]
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    if not measured:
        forest = [c for c in candidates if c.model == "isolation_forest"]
        if forest:  # no labels at all: see the module's docstring
            return Choice(
                forest[0],
                "no labels: the IsolationForest (a template model trained on unlabelled "
                "sessions learns their anomalies too, and misses them)",
                list(candidates),
            )
        fallback = sorted(
            candidates,
            key=lambda c: (c.family != "template_lm", c.model != "max_nll", c.name),
        )[0]
        return Choice(
            fallback,
            "no anomalous dev session to measure on: the label-free template model (max NLL) "
            "where it was trained, else the count-vector model",
            list(candidates),
        )
    best_ap = max(finite(c.dev["average_precision"]) for c in measured)
    close = [c for c in measured if finite(c.dev["average_precision"]) >= best_ap - AP_TIE]
    chosen = sorted(
        close, key=lambda c: (-finite(c.dev.get("f1")), rank.get(c.family, 99), c.name)
    )[0]
    runner = [c for c in measured if c is not chosen]
    why = (
        f"the best dev average precision {finite(chosen.dev['average_precision']):.3f} "
        f"(within {AP_TIE} of the best counts as a tie, then dev F1 "
        f"{finite(chosen.dev.get('f1')):.3f}, then the cheaper family) of "
        f"{len(measured)} candidate(s)"
    )
    if runner:
        second = max(runner, key=lambda c: finite(c.dev["average_precision"]))
        why += f"; next: {second.name} at {finite(second.dev['average_precision']):.3f}"
    return Choice(chosen, why, list(candidates))


def read_choice(folder: Path) -> dict:
    """What a champion folder says was chosen: ``champion`` (family, model, threshold, dev and
    test figures), ``why`` and every ``candidates``' figures."""
    path = Path(folder) / CHAMPION_FILE
    if not path.is_file():
        raise ModelFileError(f"{folder}: no {CHAMPION_FILE}: not a session champion folder")
    return json.loads(path.read_text())


def write_champion(
    choice: Choice, templates: dict[int, str], folder: Path, model_folder: Path, version: str = ""
) -> Path:
    """A champion folder: a copy of the chosen model's folder (``model_folder``, as trained or
    as the registry holds it), with what was chosen and the source's template texts; its
    manifest covers the added files."""
    from logfit_dagster.core.models.base import read_manifest, write_manifest

    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    source = Path(model_folder)
    manifest = read_manifest(source)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("checkpoint*", "*.tmp"))
    (folder / CHAMPION_FILE).write_text(
        json.dumps(
            {
                "champion": asdict(choice.champion),
                "why": choice.why,
                "candidates": [asdict(c) for c in choice.candidates],
            },
            default=float,
        )
    )
    (folder / TEMPLATES_FILE).write_text(
        json.dumps({str(int(k)): str(v) for k, v in templates.items()})
    )
    manifest.extra = {
        **manifest.extra,
        "champion": {
            "family": choice.champion.family,
            "model": choice.champion.model,
            "threshold": choice.champion.threshold,
            "version": version,
        },
    }
    write_manifest(folder, manifest)
    return folder


class ChampionScorer:
    """A stored session champion: scores sessions given as template texts."""

    def __init__(self, folder: Path):
        from logfit_dagster.core.models.base import load, read_manifest

        folder = Path(folder)
        manifest = read_manifest(folder)
        path = folder / CHAMPION_FILE
        stored = read_choice(folder)
        chosen = stored["champion"]
        self.folder = folder
        self.family, self.model = chosen["family"], chosen["model"]
        self.threshold = float(chosen["threshold"])
        self.why = stored.get("why", "")
        self.test = chosen.get("test", {})
        self.templates = {
            int(k): v for k, v in json.loads((folder / TEMPLATES_FILE).read_text()).items()
        }
        if manifest.family != self.family:
            raise ModelFileError(
                f"{path}: names family {self.family!r}, the folder holds {manifest.family!r}"
            )
        if self.family == "session_counts":
            self._model = load(folder, families=("session_counts",), kind=self.model)
        else:
            from logfit_dagster.core.session_scoring import TemplateFolderScorer

            self._model = TemplateFolderScorer(load(folder, families=("template_lm",)), self.model)

    def with_method(self, method: str):
        """The same template model flagging by another of its scoring methods."""
        if self.family != "template_lm":
            raise ValueError(
                f"--method {method}: the champion of this source is {self.name}, not a template "
                "model"
            )
        return self._model.with_method(method)

    @property
    def name(self) -> str:
        return f"{self.family}:{self.model}"

    def score(self, sessions: list[list[str]]) -> pd.DataFrame:
        """Per session (a list of template texts): ``score``, ``flagged`` and ``unseen_rate``,
        the share of its lines whose template the model never saw."""
        if self.family == "session_counts":
            ids = {text: i for i, text in self.templates.items()}
            known = [[ids[t] for t in s if t in ids] for s in sessions]
            score = np.asarray(self._model.score(known), dtype=float)
            unseen = np.array(
                [1.0 - len(k) / len(s) if s else 0.0 for k, s in zip(known, sessions, strict=True)]
            )
            flagged = score >= self.threshold
        else:
            return self._model.score(sessions)[["score", "flagged", "unseen_rate"]]
        return pd.DataFrame({"score": score, "flagged": flagged, "unseen_rate": unseen})
