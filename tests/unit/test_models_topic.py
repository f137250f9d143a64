"""The messages that publish a champion on the `models` topic, and reading them back
(worker/io/models.py). The worker's use of them is in
tests/integration/test_models_topic.py."""

import pytest
from river import linear_model, preprocessing

from worker.core.config import EngineConfig
from worker.core.engine import Engine
from worker.core.registry import ModelVersion
from worker.core.types import Event
from worker.errors import SnapshotError
from worker.io.models import Catalog, model_messages, tombstones, versions_to_prune

SECRET = b"models secret"


def trained_version(version: int = 4) -> ModelVersion:
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for i in range(200):
        model.learn_one({"x": float(i % 7), "y": float(i % 3)}, i % 7 > 3)
    return ModelVersion(version, "preprocessing.StandardScaler | linear_model.LogisticRegression",
                        version - 1, "promoted", 1200, 1764160000.0, model, learned=700)


def test_a_published_model_reads_back_identical_with_its_lineage():
    mv = trained_version()
    messages = model_messages(mv, SECRET, chunk_bytes=400, published_labelled=1500)
    keys = [key for key, _ in messages]
    assert len(messages) > 3, "a model bigger than a chunk is split"
    assert keys[-1] == b"v4", "the manifest comes after its chunks"
    assert keys[:-1] == [f"v4/{i}".encode() for i in range(len(messages) - 1)]
    assert all(len(value) <= 400 for _, value in messages[:-1])

    catalog = Catalog(messages)
    [manifest] = catalog.manifests()
    assert manifest == {"version": 4, "spec": mv.spec, "parent": 3, "reason": "promoted",
                        "created_labelled": 1200, "created_ts": 1764160000.0, "learned": 700,
                        "published_labelled": 1500, "chunks": len(messages) - 1,
                        "bytes": manifest["bytes"]}
    model = catalog.load(4, SECRET)
    x = {"x": 2.5, "y": 1.0}
    assert model is not mv.model and model.predict_proba_one(x) == mv.model.predict_proba_one(x)


def test_versions_are_listed_in_order_and_a_republication_replaces_itself():
    messages = [*model_messages(trained_version(5), SECRET, chunk_bytes=500, published_labelled=9),
                *model_messages(trained_version(2), SECRET, chunk_bytes=500, published_labelled=3),
                *model_messages(trained_version(5), SECRET, chunk_bytes=500, published_labelled=11)]
    manifests = Catalog(messages).manifests()
    assert [(m["version"], m["published_labelled"]) for m in manifests] == [(2, 3), (5, 11)]


def test_an_unknown_version_names_the_published_ones():
    catalog = Catalog(model_messages(trained_version(2), SECRET, chunk_bytes=500, published_labelled=0))
    with pytest.raises(SnapshotError, match=r"version 7 is not on the models topic \(published: 2\)"):
        catalog.load(7, SECRET)
    with pytest.raises(SnapshotError, match=r"published: none"):
        Catalog().load(1, SECRET)


def test_a_missing_chunk_a_tampered_chunk_or_another_secret_is_refused():
    messages = model_messages(trained_version(3), SECRET, chunk_bytes=500, published_labelled=0)
    missing = Catalog(m for m in messages if m[0] != b"v3/1")
    with pytest.raises(SnapshotError, match="missing chunks"):
        missing.load(3, SECRET)

    key, value = messages[-2]
    tampered = Catalog([*messages[:-2], (key, value[:-1] + bytes([value[-1] ^ 1])), messages[-1]])
    with pytest.raises(SnapshotError):
        tampered.load(3, SECRET)

    with pytest.raises(SnapshotError, match="signature mismatch"):
        Catalog(messages).load(3, b"another secret")


def test_a_deleted_version_is_gone_and_foreign_keys_are_ignored():
    messages = model_messages(trained_version(3), SECRET, chunk_bytes=500, published_labelled=0)
    catalog = Catalog([*messages, (b"v3", None), (None, b"no key"), (b"vnot-json", b"{")])
    assert catalog.manifests() == []
    with pytest.raises(SnapshotError, match="version 3 was pruned from the models topic"):
        catalog.load(3, SECRET)


@pytest.mark.parametrize("manifest", [b"{", b"[1, 2]", b'{"version": 3}', b'{"version": 3, "chunks": "2"}',
                                      b'{"version": "3", "chunks": 2}', b'{"version": 3, "chunks": 0}',
                                      b'{"version": 3, "chunks": 1000000000}',
                                      b'{"version": 2, "chunks": 1}'])
@pytest.mark.timeout(5)  # listing a billion chunk keys first took minutes
def test_a_malformed_manifest_is_skipped_and_refused_with_a_snapshot_error(manifest):
    """Not written by a worker, it must not stop one: a scorer catches SnapshotError. Nor
    may a count it names be walked (a worker writes a tombstone per chunk of a version it
    prunes), or another version's manifest be taken for it."""
    messages = model_messages(trained_version(2), SECRET, chunk_bytes=500, published_labelled=0)
    catalog = Catalog([*messages, (b"v3/0", b"chunk"), (b"v3", manifest)])
    assert [m["version"] for m in catalog.manifests()] == [2]
    with pytest.raises(SnapshotError, match="version 3 on the models topic"):
        catalog.load(3, SECRET)



def test_the_engine_says_when_the_warm_up_is_over():
    engine = Engine(EngineConfig(warmup_labels=3))
    states = []
    for i in range(4):
        engine.process(Event(id=f"e{i}", features={"x": float(i)}, label=i % 2 == 0))
        states.append(engine.warmed_up)
    assert states == [False, False, True, True]


def test_a_follower_forgets_older_models_but_keeps_their_manifests():
    catalog = Catalog()
    for version in (1, 2, 3, 4, 5):
        for key, value in model_messages(trained_version(version), SECRET, chunk_bytes=500,
                                         published_labelled=0):
            catalog.add(key, value)
    catalog.keep_chunks_of({2, 4})  # e.g. champion v2, challenger v4 (v3 a discarded challenger)
    assert [m["version"] for m in catalog.manifests()] == [1, 2, 3, 4, 5]
    assert catalog.published(1) and all(catalog.load(v, SECRET) is not None for v in (2, 4, 5))
    assert [v for v in (1, 2, 3, 4, 5, 6) if catalog.has_chunks(v)] == [2, 4, 5]
    for forgotten in (1, 3):
        with pytest.raises(SnapshotError, match="missing chunks"):
            catalog.load(forgotten, SECRET)


def test_a_follower_forgets_pruned_versions_older_than_what_it_serves():
    """Memory bounded by the retained versions, not by every version ever published."""
    catalog = Catalog()
    for version in range(1, 201):
        messages = model_messages(trained_version(version), SECRET, chunk_bytes=500, published_labelled=0)
        for key, value in messages:
            catalog.add(key, value)
        if version > 3:  # models_retain = 3
            for key, value in tombstones(version - 3, len(messages) - 1):
                catalog.add(key, value)
        catalog.keep_chunks_of({version})
    assert [m["version"] for m in catalog.manifests()] == [198, 199, 200]
    assert {key.split(b"/")[0] for key in catalog._latest} == {b"v198", b"v199", b"v200"}
    assert {key for key in catalog._latest if b"/" in key} == {key for key, _ in messages[:-1]}


def test_a_pruned_version_is_gone_and_says_so():
    messages = [*model_messages(trained_version(2), SECRET, chunk_bytes=500, published_labelled=3),
                *model_messages(trained_version(3), SECRET, chunk_bytes=500, published_labelled=9)]
    chunks = sum(1 for key, _ in messages if key.startswith(b"v2/"))
    pruning = tombstones(2, chunks)
    assert pruning[0] == (b"v2", None), "the manifest goes first: never a manifest without its chunks"
    v2_chunks = sorted(key for key, _ in messages if key.startswith(b"v2/"))
    assert sorted(key for key, _ in pruning[1:]) == v2_chunks

    catalog = Catalog([*messages, *pruning])
    assert [m["version"] for m in catalog.manifests()] == [3]
    assert catalog.pruned(2) and not catalog.published(2)
    assert not catalog.pruned(3) and not catalog.pruned(7), "published or never there: not pruned"
    with pytest.raises(SnapshotError, match="version 2 was pruned from the models topic"):
        catalog.load(2, SECRET)
    assert catalog.load(3, SECRET) is not None


@pytest.mark.parametrize(("on_topic", "keep", "champion", "pruned"), [
    ([1, 2, 3], 3, 3, []),  # within the limit
    ([3, 1, 4, 2], 2, 4, [1, 2]),  # the oldest go, in any order of publication
    ([1, 2, 3, 4], 2, 1, [2]),  # after a rollback to v1: the serving champion stays
    ([1, 2, 3, 4], 1, 4, [1, 2, 3]),
    (list(range(1, 500)), 0, 499, []),  # 0: keep all
])
def test_versions_beyond_the_retention_are_pruned_but_never_the_champion(on_topic, keep, champion, pruned):
    assert versions_to_prune(on_topic, keep, champion) == pruned
