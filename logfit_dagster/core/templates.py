"""Template mining with Drain3, one call per distinct masked content.

Real logs repeat: 20,000 HDFS lines have about 21 distinct masked forms. Drain3 sends an
already-seen masked content to the same cluster, so mining only the first occurrence of each
distinct form, in order of appearance, gives Drain3's own answer at a fraction of the cost.
The miner's state is saved per source so that a grown source continues where it stopped and its
template ids stay stable across runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from logfit_dagster.core.masking import DEFAULT_MASKS, MaskRule, mask_column
from logfit_dagster.core.miner_state import MinerState, read_miner_state

# Characters of a line's content that template mining reads (see TemplateMiner.mine).
MAX_TEMPLATE_CHARS = 4096


@dataclass(frozen=True)
class ParserProfile:
    """How a source's content is masked and mined.

    Attributes:
        masks: the masking rules, applied in order.
        sim_th: Drain's similarity threshold.
        depth: Drain's parse-tree depth.
        max_children: Drain's maximum children per tree node.
        extra_delimiters: characters split like whitespace before mining.
    """

    masks: tuple[MaskRule, ...] = DEFAULT_MASKS
    sim_th: float = 0.5
    depth: int = 4
    max_children: int = 100
    extra_delimiters: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """A short hash of the profile; a saved miner state is only reused under the same one."""
        payload = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _extra(*patterns: str) -> tuple[MaskRule, ...]:
    return tuple(MaskRule(f"extra{i}", pattern, "<*>") for i, pattern in enumerate(patterns))


# Per-system tuning for the Loghub systems: Loghub's benchmark settings for Drain (the extra
# regexes, similarity threshold and depth), on top of the default masks.
LOGHUB_PROFILES: dict[str, ParserProfile] = {
    "HDFS": ParserProfile(sim_th=0.5, depth=4),
    "Hadoop": ParserProfile(sim_th=0.5, depth=4),
    "Spark": ParserProfile(masks=_extra(r"\b[KGTM]?B\b") + DEFAULT_MASKS, sim_th=0.5, depth=4),
    "Zookeeper": ParserProfile(sim_th=0.5, depth=4),
    "BGL": ParserProfile(masks=_extra(r"core\.\d+") + DEFAULT_MASKS, sim_th=0.5, depth=4),
    "HPC": ParserProfile(masks=_extra(r"=\d+") + DEFAULT_MASKS, sim_th=0.5, depth=4),
    "Thunderbird": ParserProfile(sim_th=0.5, depth=4),
    "Windows": ParserProfile(masks=_extra(r"0x[0-9a-fA-F]+") + DEFAULT_MASKS, sim_th=0.7, depth=5),
    "Linux": ParserProfile(
        masks=_extra(r"\d{2}:\d{2}:\d{2}") + DEFAULT_MASKS, sim_th=0.39, depth=6
    ),
    "Android": ParserProfile(
        masks=_extra(
            r"(/[\w-]+)+",
            r"([\w-]+\.){2,}[\w-]+",
            r"\b(\-?\+?\d+)\b|\b0[Xx][a-fA-F\d]+\b|\b[a-fA-F\d]{4,}\b",
        )
        + DEFAULT_MASKS,
        sim_th=0.2,
        depth=6,
    ),
    "HealthApp": ParserProfile(sim_th=0.2, depth=4),
    "Apache": ParserProfile(sim_th=0.5, depth=4),
    "Proxifier": ParserProfile(
        masks=_extra(r"<\d+\s?sec", r"([\w-]+\.)+[\w-]+(:\d+)?", r"\d{2}:\d{2}(:\d{2})*")
        + DEFAULT_MASKS,
        sim_th=0.6,
        depth=3,
    ),
    "OpenSSH": ParserProfile(
        masks=_extra(r"([\w-]+\.){2,}[\w-]+") + DEFAULT_MASKS, sim_th=0.6, depth=5
    ),
    "OpenStack": ParserProfile(
        masks=_extra(r"((\d+\.){3}\d+,?)+", r"/.+?\s") + DEFAULT_MASKS,
        sim_th=0.5,
        depth=5,
    ),
    "Mac": ParserProfile(
        masks=_extra(r"([\w-]+\.){2,}[\w-]+") + DEFAULT_MASKS, sim_th=0.7, depth=6
    ),
}


def profile_for(format_name: str) -> ParserProfile:
    """The parser profile of a format: Loghub's tuning where known, the defaults otherwise."""
    return LOGHUB_PROFILES.get(format_name, ParserProfile())


# Masked forms remembered with their cluster, so that a form met again in a later batch is not
# mined again; beyond this many, a form is simply given to Drain again.
FORM_CACHE_SIZE = 1_000_000


@dataclass
class MiningResult:
    """Template ids per line, the template text of every cluster seen in this call, and the
    number of masked forms this miner had not seen before."""

    template_ids: np.ndarray
    templates: dict[int, str] = field(default_factory=dict)
    masked: pa.Array | None = None
    distinct_forms: int = 0
    new_clusters: int = 0


class TemplateMiner:
    """A Drain3 miner over masked content, with its state saved between runs.

    Args:
        profile: masking and Drain settings.
        state_path: where the miner's state lives; ``None`` keeps it in memory only.
    """

    def __init__(self, profile: ParserProfile, state_path: Path | None = None):
        from drain3.drain import Drain

        self.profile = profile
        self.state_path = Path(state_path) if state_path else None
        # masked form -> cluster id of the forms this miner has seen (bounded)
        self._cluster_of_form: dict[str, int] = {}
        self.drain = Drain(
            sim_th=profile.sim_th,
            depth=profile.depth,
            max_children=profile.max_children,
            extra_delimiters=list(profile.extra_delimiters),
            param_str="<*>",
        )
        self.resumed_clusters = 0
        if self.state_path is not None and self.state_path.exists():
            self._load()

    def _load(self) -> None:
        assert self.state_path is not None
        state = read_miner_state(self.state_path)
        if state.profile != self.profile.fingerprint():
            # The masks or Drain settings changed: old clusters would not mean the same thing.
            return
        state.restore(self.drain)
        self.resumed_clusters = len(self.drain.id_to_cluster)

    def save(self) -> None:
        """Write the state atomically: a crash mid-write leaves the previous state intact."""
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(MinerState.of(self.drain, self.profile.fingerprint()).to_json())
        fd, tmp = tempfile.mkstemp(dir=self.state_path.parent, prefix=".miner-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def mine(
        self, content: pa.Array | pa.ChunkedArray, masked: pa.Array | None = None
    ) -> MiningResult:
        """Mask a content column and assign each line a template id.

        Args:
            masked: ``mask(content)`` when it was computed already (in another thread, say).

        Returns:
            A ``MiningResult`` whose ``templates`` holds the final template of every cluster any
            line of this call landed in.
        """
        if masked is None:
            masked = self.mask(content)
        encoded = pc.dictionary_encode(masked)
        distinct = encoded.dictionary.to_pylist()
        before = self.drain.clusters_counter
        cluster_of_form = np.empty(len(distinct), dtype=np.int64)
        add, known = self.drain.add_log_message, self._cluster_of_form
        new_forms = 0
        for i, form in enumerate(distinct):
            cluster_id = known.get(form)
            if cluster_id is None:
                # each form is added once, in order of first appearance, whether the source
                # comes in one call or in batches: the clusters are the same either way
                cluster_id = add(form)[0].cluster_id
                new_forms += 1
                if len(known) < FORM_CACHE_SIZE:
                    known[form] = cluster_id
            cluster_of_form[i] = cluster_id
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        template_ids = cluster_of_form[indices] if len(indices) else np.empty(0, dtype=np.int64)
        templates = {
            int(cid): self.drain.id_to_cluster[int(cid)].get_template()
            for cid in np.unique(cluster_of_form)
        }
        return MiningResult(
            template_ids=template_ids,
            templates=templates,
            masked=masked,
            distinct_forms=new_forms,
            new_clusters=self.drain.clusters_counter - before,
        )

    def mask(self, content: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The masked form of each line: what Drain sees. It reads no state of the miner, so
        batches can be masked in parallel while earlier ones are mined."""
        # a template is mined from a line's first MAX_TEMPLATE_CHARS characters: a pathological
        # line (megabytes on one line) costs no more than that; the content itself stays whole
        content = pc.utf8_slice_codeunits(pc.fill_null(content, ""), 0, MAX_TEMPLATE_CHARS)
        return pc.utf8_slice_codeunits(
            mask_column(content, self.profile.masks), 0, MAX_TEMPLATE_CHARS
        )

    def template_of(self, cluster_id: int) -> str:
        """The current template of a cluster."""
        return self.drain.id_to_cluster[cluster_id].get_template()
