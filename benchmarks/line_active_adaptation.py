"""A new system adapts with a few LLM labels: the champion asks about the k line shapes it is
least sure of (weighted by the lines they cover), and adapts to the answers.

Leave-one-family-out over the 20 recorded Claude label sets (``core/line_protocol.py``): the
line model (``line_tfidf``, the asset's defaults, its own held-out-family threshold) is trained
on five families; each source of the sixth is a new system. Per source, its shapes are ranked
by ``lines x uncertainty`` under that model (``core/line_adaptation.py``), the top k are
"asked" (the recorded labeler plays the LLM: the recorded answer of one line of the shape), and
the model adapts three ways, each measured on every line of the held-out sources:

- ``answers``: the asked shapes take the LLM's answer; the rest keep the shipped threshold;
- ``answers + threshold``: and the source's threshold is chosen on the asked lines;
- ``refit``: the model is trained again with the asked lines of the held-out family added.

k = 0 is the shipped model. The plain char n-gram baseline (raw lines, balanced LR, threshold
0.5) and the baseline refit on the same answers are beside it. Cost: the requests the
``uncertain`` plan sends for k shapes (excerpts of 7 lines, 50 lines a request), and dollars at
Claude Haiku's batch price with the project's token estimate.

    python benchmarks/line_active_adaptation.py -> benchmarks/results/line_active_adaptation.{json,md}
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import recorded_labels, write_results  # noqa: E402
from benchmarks.line_family_holdout import DEFAULTS, scores  # noqa: E402
from logfit_dagster.core.line_adaptation import (  # noqa: E402
    adapt_threshold,
    apply_answers,
    ask_order,
    shape_table,
)
from logfit_dagster.core.line_model import LineScorer  # noqa: E402
from logfit_dagster.core.line_protocol import baseline_pipeline, family_groups  # noqa: E402
from logfit_dagster.core.models.base import train  # noqa: E402

KS = (0, 10, 25, 50)


def fit_product(lines: pd.DataFrame) -> LineScorer:
    with tempfile.TemporaryDirectory() as tmp:
        train("line_tfidf", lines[["source", "raw", "label"]], DEFAULTS, Path(tmp) / "m")
        return LineScorer.load(Path(tmp) / "m" / "model.json")


def asked_lines(source_lines: pd.DataFrame, table: pd.DataFrame, k: int) -> pd.DataFrame:
    """The answers the LLM gives for the top k shapes: the recorded label of the first line of
    each shape (one request answers one line; the plan propagates it to the shape)."""
    chosen = table.head(k)
    first = source_lines.reset_index(drop=True).groupby("shape_index").head(1)
    answers = first.set_index("shape_index").loc[chosen["shape_index"], ["raw", "y"]]
    return answers.reset_index()


def main() -> None:
    lines = recorded_labels()
    lines["y"] = (lines["label"] == "LOOK").astype(int)
    families = family_groups(lines["source"])
    rows = []
    started = time.perf_counter()
    pooled: dict[tuple[str, int], list] = {}
    for family in np.unique(families):
        held = families == family
        train_lines = lines[~held]
        model = fit_product(train_lines)
        baseline = baseline_pipeline().fit(train_lines["raw"].astype(str), train_lines["y"])
        test = lines[held].reset_index(drop=True)
        p = np.asarray(model.score_lines(test["raw"].astype(str).tolist()), dtype=float)
        base_p = baseline.predict_proba(test["raw"].astype(str))[:, 1]
        tables = {}
        for source, part in test.groupby("source", sort=True):
            table, shape_index = shape_table(part["raw"].astype(str).tolist(), p[part.index])
            test.loc[part.index, "shape_index"] = shape_index
            tables[source] = ask_order(table, model.threshold)
        test["shape_index"] = test["shape_index"].astype(int)
        for k in KS:
            asked_all = []
            for source, part in test.groupby("source", sort=True):
                answers = asked_lines(part, tables[source], k)
                asked_all.append(answers.assign(source=source))
                idx = part.index.to_numpy()
                y = part["y"].to_numpy()
                known = dict(zip(answers["shape_index"], answers["y"], strict=True))
                sp = part["shape_index"].to_numpy()
                tuned = adapt_threshold(
                    tables[source], known, model.threshold
                ) if k else model.threshold
                for name, pred in (
                    ("line_tfidf: answers", apply_answers(p[idx] >= model.threshold, sp, known)),
                    ("line_tfidf: answers + threshold", apply_answers(p[idx] >= tuned, sp, known)),
                    ("baseline: answers", apply_answers(base_p[idx] >= 0.5, sp, known)),
                ):
                    pooled.setdefault((name, k), []).append((y, pred, family, source))
            if k:  # refit on the training families plus the answered lines of this family
                extra = pd.concat(asked_all, ignore_index=True)
                extra_lines = test[test.set_index(["source", "shape_index"]).index.isin(
                    list(zip(extra["source"], extra["shape_index"], strict=True))
                )]
                refit = fit_product(pd.concat([train_lines, extra_lines], ignore_index=True))
                rp = np.asarray(refit.score_lines(test["raw"].astype(str).tolist()), dtype=float)
                bl = baseline_pipeline().fit(
                    pd.concat([train_lines["raw"], extra_lines["raw"]]).astype(str),
                    pd.concat([train_lines["y"], extra_lines["y"]]),
                )
                bp = bl.predict_proba(test["raw"].astype(str))[:, 1]
                for source, part in test.groupby("source", sort=True):
                    idx = part.index.to_numpy()
                    sp = part["shape_index"].to_numpy()
                    answers = next(a for a in asked_all if a["source"].iloc[0] == source)
                    known = dict(zip(answers["shape_index"], answers["y"], strict=True))
                    y = part["y"].to_numpy()
                    pooled.setdefault(("line_tfidf: refit + answers", k), []).append(
                        (y, apply_answers(rp[idx] >= refit.threshold, sp, known), family, source)
                    )
                    pooled.setdefault(("baseline: refit + answers", k), []).append(
                        (y, apply_answers(bp[idx] >= 0.5, sp, known), family, source)
                    )
        print(family, round(time.perf_counter() - started), flush=True)
    for (name, k), parts in sorted(pooled.items()):
        y = np.concatenate([a for a, *_ in parts])
        pred = np.concatenate([b for _, b, *_ in parts]).astype(float)
        per_family = {}
        for yy, pp, fam, _ in parts:
            per_family.setdefault(fam, ([], []))
            per_family[fam][0].append(yy)
            per_family[fam][1].append(pp)
        macro = np.mean(
            [
                scores(np.concatenate(a), np.concatenate(b).astype(float), 0.5)["f1"]
                for a, b in per_family.values()
            ]
        )
        s = scores(y, pred, 0.5)
        rows.append(
            {
                "model": name,
                "k": k,
                "pooled F1": s["f1"],
                "precision": s["precision"],
                "recall": s["recall"],
                "macro F1 (families)": macro,
                "LOOK": s["look"],
                "lines": s["lines"],
            }
        )
    table = pd.DataFrame(rows).sort_values(["model", "k"])
    cost = request_cost()
    markdown = (
        "# Adapting the line model to a new system with k LLM-labelled shapes\n\n"
        "Leave-one-family-out over the 20 recorded label sets; per held-out source, the k "
        "shapes with the most lines x uncertainty are asked (the recorded labeler plays the "
        "LLM). Every line of the held-out sources is scored; the asked shapes' lines count too "
        "(they are the source's lines a user gets labelled).\n\n"
        + table.round(4).to_markdown(index=False)
        + "\n\n"
        + cost.to_markdown(index=False)
        + f"\n\nWall time {time.perf_counter() - started:.0f} s.\n"
    )
    write_results(
        "line_active_adaptation", {"rows": rows, "cost": cost.to_dict("records")}, markdown
    )


def request_cost() -> pd.DataFrame:
    """Requests and dollars per source for k asked shapes under the ``uncertain`` plan: one
    excerpt of 7 lines per shape, 50 lines a request, Claude Haiku 4.5 at the batch price."""
    from logfit_dagster.core.labeling.base import price_of

    rows = []
    price = price_of("claude-haiku-4-5", {}) or (1.0, 5.0)
    for k in KS:
        requests = int(np.ceil(k * 7 / 50))
        # about 60 tokens a line shown plus the system prompt (700) per request; 40 out per line
        tokens_in = requests * 700 + k * 7 * 60
        tokens_out = k * 40
        dollars = 0.5 * (tokens_in * price[0] + tokens_out * price[1]) / 1e6
        rows.append(
            {
                "k": k,
                "requests per source": requests,
                "input tokens": tokens_in,
                "output tokens": tokens_out,
                "USD per source (batch)": round(dollars, 4),
            }
        )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
