"""Do k LLM answers carry beyond the shapes asked? Two ideas, measured against plain answers.

The setting of ``line_active_adaptation.py`` (leave-one-family-out over the 20 recorded Claude
label sets, the line model at its defaults, k = 50 shapes asked per held-out source, the recorded
label of one line of each asked shape as the LLM's answer), and:

- ``propagate tau``: an unasked shape whose char n-gram TF-IDF cosine (3-5 grams, fitted on the
  source's shapes) to its nearest asked shape reaches ``tau`` takes that shape's answer;
- ``diverse tau``: asking skips a shape within ``tau`` of one already asked, so the k questions
  cover more kinds of line (then plain answers, or propagated).

Beside them, the ceilings the labels allow a shape-level answer: every shape asked (its first
line's label for all its lines) and every shape at its majority label.

    python benchmarks/line_answer_propagation.py -> benchmarks/results/line_answer_propagation.{json,md}
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, recorded_labels, write_results  # noqa: E402
from benchmarks.line_active_adaptation import fit_product  # noqa: E402
from logfit_dagster.core.line_adaptation import apply_answers, ask_order, shape_table  # noqa: E402
from logfit_dagster.core.line_protocol import family_groups  # noqa: E402

K = 50
TAUS = (0.6, 0.7, 0.8, 0.9)


def f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = int(((pred == 1) & (y == 1)).sum())
    wrong = int(((pred == 1) & (y == 0)).sum() + ((pred == 0) & (y == 1)).sum())
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def diverse(order: pd.DataFrame, vectors, row_of: dict, tau: float) -> list[int]:
    """The first k shapes of ``order``, skipping any within ``tau`` of one already chosen."""
    chosen: list[int] = []
    for shape in order["shape_index"]:
        if len(chosen) == K:
            break
        if chosen:
            near = (vectors[row_of[shape]] @ vectors[[row_of[c] for c in chosen]].T).toarray()
            if near.max() >= tau:
                continue
        chosen.append(int(shape))
    return chosen


def main() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    lines = recorded_labels()
    lines["y"] = (lines["label"] == "LOOK").astype(int)
    families = family_groups(lines["source"])
    pooled: dict[tuple[str, str], list] = {}
    started = time.perf_counter()
    for family in np.unique(families):
        held = families == family
        model = fit_product(lines[~held])
        test = lines[held].reset_index(drop=True)
        p = np.asarray(model.score_lines(test["raw"].astype(str).tolist()), dtype=float)
        for _, part in test.groupby("source", sort=True):
            table, shape_index = shape_table(part["raw"].astype(str).tolist(), p[part.index])
            order = ask_order(table, model.threshold)
            y, pp = part["y"].to_numpy(), p[part.index]
            vectors = TfidfVectorizer(
                analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True
            ).fit_transform(table["shape"].astype(str))
            row_of = {int(s): i for i, s in enumerate(table["shape_index"])}
            first = (
                part.reset_index(drop=True)
                .assign(shape_index=shape_index)
                .groupby("shape_index")
                .head(1)
                .set_index("shape_index")["y"]
            )
            majority = pd.Series(y).groupby(shape_index).mean().round().astype(int)
            pooled.setdefault(("ceiling", "every shape asked"), []).append(
                (y, first.loc[shape_index].to_numpy())
            )
            pooled.setdefault(("ceiling", "every shape at its majority label"), []).append(
                (y, majority.loc[shape_index].to_numpy())
            )
            plans = {"top-k": [int(s) for s in order.head(K)["shape_index"]]}
            plans |= {f"diverse {t}": diverse(order, vectors, row_of, t) for t in (0.8, 0.9)}
            for name, asked in plans.items():
                known = {s: int(first.loc[s]) for s in asked}
                pooled.setdefault((name, "answers"), []).append(
                    (y, apply_answers(pp >= model.threshold, shape_index, known))
                )
                similarity = (vectors @ vectors[[row_of[s] for s in known]].T).toarray()
                nearest, closeness = similarity.argmax(1), similarity.max(1)
                answers = np.array(list(known.values()))
                for tau in TAUS:
                    carried = dict(known)
                    for i, shape in enumerate(table["shape_index"]):
                        if int(shape) not in carried and closeness[i] >= tau:
                            carried[int(shape)] = int(answers[nearest[i]])
                    pooled.setdefault((name, f"propagate {tau}"), []).append(
                        (y, apply_answers(pp >= model.threshold, shape_index, carried))
                    )
        print(family, round(time.perf_counter() - started), flush=True)
    rows = []
    for (asking, how), parts in sorted(pooled.items()):
        y = np.concatenate([a for a, _ in parts])
        pred = np.concatenate([b for _, b in parts]).astype(int)
        rows.append({"asking": asking, "answers": how, "pooled_f1": f1(y, pred), "lines": len(y)})
    table = pd.DataFrame(rows)
    markdown = (
        "# Carrying k = 50 LLM answers beyond the asked shapes\n\n"
        "Leave-one-family-out over the 20 recorded label sets, the line model at its defaults; "
        "pooled LOOK F1 over every line of the held-out sources. `top-k`: the `uncertain` "
        "plan's order; `diverse tau`: the same order skipping shapes within cosine `tau` of one "
        "asked; `propagate tau`: unasked shapes within `tau` of an asked one take its answer. "
        "The ceilings: what a shape-level answer can reach with these labels.\n\n"
        + table.round(4).to_markdown(index=False)
        + f"\n\nWall time {time.perf_counter() - started:.0f} s, {machine().get('cpus', '?')} "
        "CPUs.\n"
    )
    write_results("line_answer_propagation", {"k": K, "rows": rows}, markdown)


if __name__ == "__main__":
    main()
