"""Template mining: first-occurrence mining equals Drain3's own loop, state keeps ids stable."""

import pyarrow as pa
from drain3 import TemplateMiner as Drain3Miner
from drain3.template_miner_config import TemplateMinerConfig

from logfit_dagster.core.masking import mask_column
from logfit_dagster.core.synthetic import generate
from logfit_dagster.core.templates import ParserProfile, TemplateMiner

PROFILE = ParserProfile()


def _contents(n=3000, seed=5):
    return [line.split(": ", 1)[1] for line in generate("hdfs", n, seed).lines]


def test_distinct_form_mining_matches_the_bare_drain3_loop():
    contents = _contents()
    ours = TemplateMiner(PROFILE).mine(pa.array(contents))
    config = TemplateMinerConfig()
    config.drain_sim_th, config.drain_depth, config.masking_instructions = 0.5, 4, []
    bare = Drain3Miner(config=config)
    masked = mask_column(pa.array(contents), PROFILE.masks).to_pylist()
    theirs = [bare.add_log_message(m)["cluster_id"] for m in masked]
    assert list(ours.template_ids) == theirs
    assert ours.distinct_forms < len(contents) / 10


def test_saved_state_keeps_template_ids_stable_and_grows(tmp_path):
    state = tmp_path / "drain_state.json"
    contents = _contents(2000)
    first = TemplateMiner(PROFILE, state).mine(pa.array(contents[:1000]))
    assert TemplateMiner(PROFILE, state).resumed_clusters == 0, "nothing saved yet"
    saver = TemplateMiner(PROFILE, state)
    saver.mine(pa.array(contents[:1000]))
    saver.save()
    resumed = TemplateMiner(PROFILE, state)
    assert resumed.resumed_clusters == len(set(first.template_ids))
    again = resumed.mine(pa.array(contents))
    assert list(again.template_ids[:1000]) == list(first.template_ids)
    # the second half's new shapes, and only those, became new clusters
    grown = set(again.template_ids) - set(first.template_ids)
    assert grown and again.new_clusters == len(grown)


def test_state_from_another_profile_is_not_reused(tmp_path):
    state = tmp_path / "drain_state.json"
    miner = TemplateMiner(PROFILE, state)
    miner.mine(pa.array(_contents(500)))
    miner.save()
    other = TemplateMiner(ParserProfile(sim_th=0.7), state)
    assert other.resumed_clusters == 0


def test_templates_generalise_variable_tokens():
    result = TemplateMiner(PROFILE).mine(
        pa.array(["user alice logged in", "user bob logged in", "disk full"])
    )
    assert result.template_ids[0] == result.template_ids[1] != result.template_ids[2]
    assert result.templates[int(result.template_ids[0])] == "user <*> logged in"


def test_numbers_joined_by_underscores_are_masked_and_words_with_digits_are_not():
    from logfit_dagster.core.masking import mask_text

    path = "/user/root/rand/_temporary/_task_200811092011_6387_m_000886_0/part-00886"
    assert mask_text(path) == "/user/root/rand/_temporary/_task_<NUM>_<NUM>_m_<NUM>_<NUM>/part<NUM>"
    assert mask_text("job_1445144423722_0020 done") == "job_<NUM>_<NUM> done"
    assert mask_text("log4j HTTP2 sda1_x") == "log4j HTTP2 sda1_x"
    # two task paths of one job differ only in their ids: one masked form
    other = "/user/root/rand/_temporary/_task_200811092030_0001_m_000026_0/part-00026"
    assert mask_text(path) == mask_text(other)
