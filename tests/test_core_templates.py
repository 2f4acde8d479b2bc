"""Template mining: first-occurrence mining equals Drain3's own loop, state keeps ids stable."""

import json

import pyarrow as pa
import pytest
from drain3 import TemplateMiner as Drain3Miner
from drain3.template_miner_config import TemplateMinerConfig

from logfit_dagster.core.errors import StateFileError
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


# A real jsonpickle payload of a Drain3 miner that mined "a b 1", "a b 2", "c d e", "a x 3" and
# "c d f": the older state format, read now as data only.
LEGACY_DRAIN = {
    "py/object": "drain3.drain.Drain",
    "log_cluster_depth": 4,
    "max_node_depth": 2,
    "sim_th": 0.5,
    "max_children": 100,
    "root_node": {
        "py/object": "drain3.drain.Node",
        "key_to_child_node": {
            "3": {
                "py/object": "drain3.drain.Node",
                "key_to_child_node": {
                    "a": {
                        "py/object": "drain3.drain.Node",
                        "key_to_child_node": {},
                        "cluster_ids": [1, 3],
                    },
                    "c": {
                        "py/object": "drain3.drain.Node",
                        "key_to_child_node": {},
                        "cluster_ids": [2],
                    },
                },
                "cluster_ids": [],
            }
        },
        "cluster_ids": [],
    },
    "profiler": {"py/object": "drain3.simple_profiler.NullProfiler"},
    "extra_delimiters": {"py/tuple": []},
    "max_clusters": None,
    "param_str": "<*>",
    "parametrize_numeric_tokens": True,
    "id_to_cluster": {
        "json://1": {
            "py/object": "drain3.drain.LogCluster",
            "log_template_tokens": {"py/tuple": ["a", "b", "<*>"]},
            "cluster_id": 1,
            "size": 2,
        },
        "json://2": {
            "py/object": "drain3.drain.LogCluster",
            "log_template_tokens": {"py/tuple": ["c", "d", "<*>"]},
            "cluster_id": 2,
            "size": 2,
        },
        "json://3": {
            "py/object": "drain3.drain.LogCluster",
            "log_template_tokens": {"py/tuple": ["a", "x", "3"]},
            "cluster_id": 3,
            "size": 1,
        },
    },
    "clusters_counter": 3,
}
BARE = ParserProfile(masks=())


def _legacy_state(path, drain) -> None:
    path.write_text(json.dumps({"profile": BARE.fingerprint(), "drain": json.dumps(drain)}))


def test_a_state_in_the_older_format_is_read_as_data_and_keeps_its_ids(tmp_path):
    state = tmp_path / "drain_state.json"
    _legacy_state(state, LEGACY_DRAIN)
    miner = TemplateMiner(BARE, state)
    assert miner.resumed_clusters == 3
    result = miner.mine(pa.array(["c d z", "a b 9", "new shape here"]))
    assert list(result.template_ids) == [2, 1, 4]
    miner.save()
    saved = json.loads(state.read_text())
    assert saved["format"] == "logfit-drain-state" and "py/object" not in state.read_text()
    assert TemplateMiner(BARE, state).resumed_clusters == 4


@pytest.mark.faults
def test_a_code_payload_in_the_miner_state_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    state = tmp_path / "drain_state.json"
    payload = {"py/reduce": [{"py/function": "os.system"}, {"py/tuple": [f"touch {marker}"]}]}
    _legacy_state(state, {**LEGACY_DRAIN, "profiler": payload})
    with pytest.raises(
        StateFileError, match=r"drain_state\.json: drain\.profiler: holds 'py/reduce'"
    ):
        TemplateMiner(BARE, state)
    # a class that is not Drain3's is refused too, even without a reduce
    _legacy_state(state, {**LEGACY_DRAIN, "profiler": {"py/object": "subprocess.Popen"}})
    with pytest.raises(StateFileError, match="names class 'subprocess.Popen'"):
        TemplateMiner(BARE, state)
    assert not marker.exists()


@pytest.mark.faults
@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: s.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (
            lambda s: s["clusters"][0].__setitem__(2, "a b"),
            r"clusters\[0\]: expected a list of strings",
        ),
        (
            lambda s: s["tree"]["children"].update(x={"clusters": [99], "children": {}}),
            r"cluster\(s\) \[99\]",
        ),
        (lambda s: s.update(clusters_counter=True), "clusters_counter: expected a whole number"),
    ],
)
def test_a_tampered_miner_state_fails_naming_the_file_and_field(tmp_path, change, words):
    state = tmp_path / "drain_state.json"
    miner = TemplateMiner(BARE, state)
    miner.mine(pa.array(["a b 1", "c d e"]))
    miner.save()
    saved = json.loads(state.read_text())
    change(saved)
    state.write_text(json.dumps(saved))
    with pytest.raises(StateFileError, match=words) as raised:
        TemplateMiner(BARE, state)
    assert str(state) in str(raised.value) and "delete it" in str(raised.value)
