"""The lineage over MCP: an agent asks the trained models and the labelled data, not raw files.

Every tool answers from what the lineage stored (the assets' parquet outputs, the line
champion, the materializations Dagster recorded), read-only unless materializing is enabled.
A path the user gives is read only under the roots they allowed; every reply is bounded
(``MAX_REPLY_BYTES``) and says when it was cut; no secret is ever in a reply (nothing reads
keys). A refused or failed call is an MCP tool error with a message saying what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

MAX_REPLY_BYTES = 20_000
MAX_ITEMS = 200


@dataclass
class Lineage:
    """Read access to one data folder's lineage."""

    data_dir: Path
    roots: list[Path] = field(default_factory=list)
    allow_materialize: bool = False
    _scorer: Any = None
    _labelled: Any = None

    @property
    def assets(self) -> Path:
        return self.data_dir / "assets"

    # -- what is stored ---------------------------------------------------------------------

    def sources(self) -> list[str]:
        folder = self.assets / "raw_logs"
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.is_dir() else []

    def table(self, asset: str, source: str, columns: list[str] | None = None) -> pd.DataFrame:
        path = self.assets / asset / f"{source}.parquet"
        if not path.is_file():
            raise LookupError(
                f"{asset} of {source!r} is not materialized (no {path}); sources with data: "
                f"{', '.join(self.sources()) or 'none'}"
            )
        return pq.read_table(path, columns=columns).to_pandas()

    def latest_of(self, asset: str, partition: str | None = None) -> dict:
        """The latest materialization metadata of one asset (and partition)."""
        import dagster as dg

        home = self.data_dir / "dagster_home"
        if not (home / "dagster.yaml").is_file():
            return {}
        with dg.DagsterInstance.from_config(str(home)) as instance:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(asset),
                    asset_partitions=[partition] if partition else None,
                ),
                limit=1,
            ).records
        if not records:
            return {}
        metadata = records[0].asset_materialization.metadata
        return {k: getattr(v, "value", v) for k, v in metadata.items()}

    def latest(self) -> dict[tuple[str, str | None], dict]:
        """The latest materialization metadata of each (asset, source), from the instance."""
        import dagster as dg

        home = self.data_dir / "dagster_home"
        if not (home / "dagster.yaml").is_file():
            return {}
        out: dict[tuple[str, str | None], dict] = {}
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for key in instance.get_asset_keys():
                name = key.to_user_string()
                records = instance.fetch_materializations(key, limit=200).records
                for record in records:
                    partition = record.partition_key
                    if (name, partition) in out:
                        continue
                    metadata = record.asset_materialization.metadata
                    out[name, partition] = {
                        "at": record.timestamp,
                        **{k: getattr(v, "value", v) for k, v in metadata.items()},
                    }
        return out

    def lines_before(self, source: str, since: str) -> int:
        """How many of a source's lines were stored before ``since`` (an ISO time, or a span
        back from now: ``24h``, ``7d``, ``90m``): the line count of its newest raw_logs
        materialization older than that. Lines after it are what arrived since; 0 when the
        source was first stored after ``since``."""
        import re
        import time

        import dagster as dg

        span = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd])\s*", since or "")
        if span:
            seconds = float(span.group(1)) * {"m": 60, "h": 3600, "d": 86400}[span.group(2)]
            cutoff = time.time() - seconds
        else:
            try:
                cutoff = pd.Timestamp(since).timestamp()
            except (ValueError, TypeError):
                raise ValueError(
                    f"since={since!r}: give an ISO time (2026-12-05T08:00) or a span (24h, 7d)"
                ) from None
        home = self.data_dir / "dagster_home"
        if not (home / "dagster.yaml").is_file():
            return 0
        with dg.DagsterInstance.from_config(str(home)) as instance:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_logs"), asset_partitions=[source]),
                limit=1000,
            ).records
        older = [r for r in records if r.timestamp < cutoff]
        if not older:
            return 0
        lines = older[0].asset_materialization.metadata.get("lines")
        return int(getattr(lines, "value", lines) or 0)

    def champion_scores(self, source: str) -> tuple[pd.DataFrame, str]:
        """The source's test sessions as its session champion scored them (``session_id``,
        ``label``, ``score``, ``threshold``, ``flagged``), and the champion's name; the best
        count-vector model's where no champion was chosen."""
        chosen = self.latest_of("session_champion", source).get("champion", "")
        family, _, model = str(chosen).partition(":")
        if family == "template_lm":
            frame = self.table("template_lm", source)
            frame = frame[frame["method"] == model]
        else:
            frame = self.table("session_model", source)
            if model:
                frame = frame[frame["model"] == model]
            elif len(frame):
                frame = frame[frame["best"].astype(bool)]
                chosen = f"session_counts:{frame['model'].iloc[0]}" if len(frame) else ""
            frame = frame.rename(columns={"predicted": "flagged"})
        return frame, chosen

    def champion(self):
        """The line champion, loaded once."""
        from logfit_dagster.core.line_scorers import load_line_scorer

        if self._scorer is None:
            folder = self.data_dir / "models" / "line_champion"
            legacy = self.data_dir / "models" / "look_skip_champion.json"
            path = folder if folder.exists() else legacy
            if not path.exists():
                raise LookupError(
                    f"no line champion under {self.data_dir / 'models'}: run logfit materialize"
                )
            self._scorer = (load_line_scorer(path), path)
        return self._scorer

    def allowed(self, path: str) -> Path:
        """``path`` resolved, if it lies under an allowed root (links followed first)."""
        resolved = Path(path).expanduser().resolve()
        for root in self.roots:
            if resolved == root or root in resolved.parents:
                return resolved
        allowed = ", ".join(str(r) for r in self.roots) or "none (start with --root DIR)"
        raise PermissionError(f"{path} is outside the allowed roots: {allowed}")

    def labelled_shapes(self):
        """Distinct labelled line shapes of every source with the LLM's reasons, indexed for
        nearest-shape search (character n-grams)."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        from logfit_dagster.core.line_features import shape_of

        if self._labelled is None:
            frames = []
            for source in self.sources():
                path = self.assets / "llm_labels" / f"{source}.parquet"
                if path.is_file():
                    part = pq.read_table(path, columns=["raw", "label", "reason"]).to_pandas()
                    frames.append(part.dropna(subset=["label"]).assign(source=source))
            if not frames:
                raise LookupError("no labelled lines: materialize llm_labels first")
            lines = pd.concat(frames, ignore_index=True)
            lines["shape"] = [shape_of(str(r)) for r in lines["raw"]]
            shapes = lines.drop_duplicates(["shape", "label"]).head(50_000).reset_index(drop=True)
            vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5))
            matrix = vectorizer.fit_transform(shapes["shape"])
            counts = lines.groupby("shape").size()
            shapes["lines"] = shapes["shape"].map(counts).fillna(0).astype(int)
            self._labelled = (shapes, vectorizer, matrix)
        return self._labelled


def bounded(payload: dict) -> dict:
    """``payload`` within ``MAX_REPLY_BYTES`` of JSON: its longest list is cut until it fits,
    and ``truncated`` says how many items were left out."""
    text = json.dumps(payload, default=str)
    if len(text.encode()) <= MAX_REPLY_BYTES:
        return payload
    lists = [k for k, v in payload.items() if isinstance(v, list)]
    if not lists:
        cut = text.encode()[: MAX_REPLY_BYTES - 200].decode(errors="ignore")
        return {"text": cut, "truncated": "the reply was cut at 20 kB"}
    key = max(lists, key=lambda k: len(json.dumps(payload[k], default=str)))
    items = list(payload[key])
    total = len(items)
    while (
        items
        and len(json.dumps({**payload, key: items}, default=str).encode()) > MAX_REPLY_BYTES - 200
    ):
        items = items[: max(len(items) * 3 // 4, len(items) - 1)] if len(items) > 4 else items[:-1]
    return {
        **payload,
        key: items,
        "truncated": f"{key}: {len(items)} of {total} shown to stay under 20 kB; page with offset",
    }


def _cut(text: str, width: int = 400) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _clip(limit: int) -> int:
    return max(1, min(int(limit), MAX_ITEMS))


def build_server(lineage: Lineage):
    """The MCP server of a lineage."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer(
        "logfit",
        log_level="WARNING",
        instructions=(
            "Answers from a trained, evaluated log-anomaly lineage. Start with list_sources; "
            "then top_look_lines and anomalous_sessions of a source say what went wrong; "
            "search_templates, explain_line and score_lines go deeper."
        ),
    )

    def guarded(function):
        """Refusals and missing data as tool errors with their message, never a crash."""
        import functools

        @functools.wraps(function)
        def call(*args, **kwargs):
            try:
                return bounded(function(*args, **kwargs))
            except (LookupError, PermissionError, ValueError, OSError) as exc:
                raise ToolError(str(exc)) from None
            except Exception as exc:  # a logfit error names its file: it is the message
                from logfit_dagster.core.errors import LogfitError

                if isinstance(exc, LogfitError):
                    raise ToolError(str(exc)) from None
                raise

        return call

    @server.tool(
        description="Every log source with its latest materialization and headline metrics."
    )
    @guarded
    def list_sources() -> dict:
        latest = lineage.latest()
        rows = []
        for source in lineage.sources():
            raw = latest.get(("raw_logs", source), {})
            truth = latest.get(("ground_truth_labels", source), {})
            model = latest.get(("session_model", source), {})
            champion = latest.get(("session_champion", source), {})
            labels = latest.get(("llm_labels", source), {})
            rows.append(
                {
                    "source": source,
                    "materialized_at": pd.Timestamp(raw["at"], unit="s", tz="UTC").isoformat()
                    if "at" in raw
                    else None,
                    "lines": raw.get("lines"),
                    "templates": latest.get(("parsed_logs", source), {}).get("templates"),
                    "sessions": latest.get(("sessions", source), {}).get("sessions"),
                    "anomalous_sessions": truth.get("anomalous_sessions"),
                    "look_lines": labels.get("look_lines"),
                    "session_champion": champion.get("champion")
                    or (f"session_counts:{model['best_model']}" if "best_model" in model else None),
                    "session_test_f1": champion.get("test_f1", model.get("test_f1")),
                    "session_test_anomalous": champion.get(
                        "test_anomalous", model.get("test_anomalous")
                    ),
                }
            )
        champion = latest.get(("line_champion", None), {})
        return {
            "sources": rows,
            "line_champion": {k: champion.get(k) for k in ("family", "why", "version")},
        }

    @server.tool(
        description="The lines of a source the line champion marks LOOK, most probable first, "
        "with their text and the champion's threshold."
    )
    @guarded
    def top_look_lines(source: str, limit: int = 20, offset: int = 0, since: str = "") -> dict:
        scored = lineage.table("scored_lines", source)
        after = lineage.lines_before(source, since) if since else 0
        scored = scored[scored["line_number"] > after]
        look = scored[scored["label"] == "LOOK"].sort_values("probability", ascending=False)
        page = look.iloc[offset : offset + _clip(limit)]
        raw = lineage.table("raw_logs", source, ["line_number", "raw"]).set_index("line_number")
        latest = lineage.latest_of("scored_lines", source)
        return {
            "source": source,
            **({"since": since, "lines_before": after} if since else {}),
            "look_lines": len(look),
            "lines": len(scored),
            "family": latest.get("model_family"),
            "threshold": float(lineage.champion()[0].threshold),
            "items": [
                {
                    "line_number": int(r.line_number),
                    "probability": round(float(r.probability), 4),
                    "raw": _cut(str(raw.at[r.line_number, "raw"])),
                }
                for r in page.itertuples()
            ],
            "offset": offset,
        }

    @server.tool(
        description="The most anomalous sessions of a source by its session models (test "
        "split), with the scoring model, its threshold and the session's lines."
    )
    @guarded
    def anomalous_sessions(
        source: str, limit: int = 5, lines_per_session: int = 20, since: str = ""
    ) -> dict:
        best, name = lineage.champion_scores(source)
        if best.empty:
            raise LookupError(f"{source}: no session model was trained (see its materialization)")
        threshold = float(best["threshold"].iloc[0])
        sessions = lineage.table("sessions", source, ["session_id", "text", "n_lines", "last_line"])
        after = lineage.lines_before(source, since) if since else 0
        if after:  # sessions with a line that arrived since
            recent = set(sessions.loc[sessions["last_line"] > after, "session_id"])
            best = best[best["session_id"].isin(recent)]
        flagged = best.sort_values("score", ascending=False).head(_clip(limit))
        text = dict(zip(sessions["session_id"], sessions["text"], strict=True))
        sizes = dict(zip(sessions["session_id"], sessions["n_lines"], strict=True))
        items = []
        for row in flagged.itertuples():
            body = str(text.get(row.session_id, "")).splitlines()
            items.append(
                {
                    "session_id": row.session_id,
                    "score": round(float(row.score), 4),
                    "flagged": bool(row.flagged),
                    "label": None if pd.isna(row.label) else int(row.label),
                    "lines": int(sizes.get(row.session_id, len(body))),
                    "text": [_cut(x, 240) for x in body[: max(1, lines_per_session)]],
                }
            )
        return {
            "source": source,
            **({"since": since, "lines_before": after} if since else {}),
            "model": name,
            "threshold": threshold,
            "scored_sessions": len(best),
            "flagged_sessions": int(best["flagged"].astype(bool).sum()),
            "items": items,
        }

    @server.tool(description="Templates of a source whose text contains the query, with counts.")
    @guarded
    def search_templates(source: str, query: str = "", limit: int = 20) -> dict:
        templates = lineage.table("log_templates", source)
        hits = templates[templates["template"].str.contains(query, case=False, regex=False)]
        hits = hits.sort_values("count", ascending=False).head(_clip(limit))
        return {
            "source": source,
            "matches": len(hits),
            "items": [
                {
                    "template_id": int(r.template_id),
                    "template": _cut(str(r.template)),
                    "count": int(r.count),
                    "first_line": int(r.first_line),
                    "last_line": int(r.last_line),
                }
                for r in hits.itertuples()
            ],
        }

    @server.tool(
        description="Why a line would be flagged: its shape, the champion's probability and "
        "the nearest labelled shapes with the LLM's recorded reasons."
    )
    @guarded
    def explain_line(line: str, neighbours: int = 5) -> dict:
        from sklearn.metrics.pairwise import linear_kernel

        from logfit_dagster.core.line_features import shape_of

        scorer, path = lineage.champion()
        probability = float(scorer.score_lines([line])[0])
        shapes, vectorizer, matrix = lineage.labelled_shapes()
        shape = shape_of(line)
        similarity = linear_kernel(vectorizer.transform([shape]), matrix).ravel()
        nearest = similarity.argsort()[::-1][: _clip(neighbours)]
        return {
            "shape": _cut(shape),
            "probability": round(probability, 4),
            "label": "LOOK" if probability >= scorer.threshold else "SKIP",
            "threshold": float(scorer.threshold),
            "model": str(path),
            "nearest": [
                {
                    "shape": _cut(str(shapes.at[i, "shape"])),
                    "similarity": round(float(similarity[i]), 3),
                    "label": str(shapes.at[i, "label"]),
                    "reason": _cut(str(shapes.at[i, "reason"]), 300),
                    "source": str(shapes.at[i, "source"]),
                    "lines": int(shapes.at[i, "lines"]),
                }
                for i in nearest
            ],
        }

    @server.tool(
        description="Score lines, or a log file under the allowed roots, with the line "
        "champion: the LOOK lines with their probabilities, paged."
    )
    @guarded
    def score_lines(
        lines: list[str] | None = None, path: str = "", limit: int = 50, offset: int = 0
    ) -> dict:
        from logfit_dagster.core.classify import classify_file

        scorer, model = lineage.champion()
        if path:
            import io

            target = lineage.allowed(path)
            out = io.StringIO()
            stats = classify_file(target, scorer, look_out=out)
            found = [x.split("\t", 1) for x in out.getvalue().splitlines()]
            items = [
                {"line_number": int(n), "raw": _cut(raw)}
                for n, raw in found[offset : offset + _clip(limit)]
            ]
            return {
                "path": str(target),
                "lines": stats.lines,
                "look_lines": stats.look,
                "threshold": float(scorer.threshold),
                "model": str(model),
                "items": items,
                "offset": offset,
            }
        if not lines:
            raise ValueError("give lines to score, or a path under the allowed roots")
        probability = scorer.score_lines(list(lines)[:10_000])
        look = [
            {"index": i, "probability": round(float(p), 4), "raw": _cut(lines[i])}
            for i, p in enumerate(probability)
            if p >= scorer.threshold
        ]
        return {
            "lines": len(probability),
            "look_lines": len(look),
            "threshold": float(scorer.threshold),
            "model": str(model),
            "items": look[offset : offset + _clip(limit)],
            "offset": offset,
        }

    @server.tool(
        description="Materialize one source's lineage (off unless the server was started "
        "with --allow-materialize) and report the run."
    )
    @guarded
    def materialize(source: str) -> dict:
        if not lineage.allow_materialize:
            raise PermissionError(
                "materializing is off: start logfit mcp with --allow-materialize to enable it"
            )
        import subprocess
        import sys

        env = {**os.environ, "LOGFIT_DATA_DIR": str(lineage.data_dir)}
        env.pop("DAGSTER_HOME", None)
        result = subprocess.run(
            [sys.executable, "-m", "logfit_dagster.cli", "materialize", source],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
        )
        return {
            "source": source,
            "exit_code": result.returncode,
            "summary": _cut(result.stdout, 8000),
            "errors": _cut(result.stderr[-4000:], 4000),
        }

    @server.resource(
        "logfit://metrics_overview",
        name="metrics_overview",
        description="Every source's session models and every line family side by side.",
        mime_type="text/markdown",
    )
    def metrics_overview() -> str:
        path = lineage.assets / "metrics_overview" / "all.parquet"
        if not path.is_file():
            return "metrics_overview is not materialized yet: run logfit materialize"
        text = pd.read_parquet(path).round(4).to_markdown(index=False)
        if len(text.encode()) > MAX_REPLY_BYTES:
            return (
                text.encode()[: MAX_REPLY_BYTES - 100].decode(errors="ignore") + "\n…(cut at 20 kB)"
            )
        return text

    return server
