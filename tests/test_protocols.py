"""The protocols: the official draws equal Dassl's, CoOp's pickled sets are read safely,
selection sees test data only where ``paper`` says so, the reported figures, prompts."""

import collections
import dataclasses
import json
import os
import pickle
import random
import shutil
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxclip_fs import cli, methods
from jaxclip_fs.convert.load import load_clip
from jaxclip_fs.data import get_dataset
from jaxclip_fs.data.coop_pkl import coop_fewshot, read_fewshot_pkl
from jaxclip_fs.data.fewshot import class_order, coop_val_rows, official_fewshot, official_sets
from jaxclip_fs.engine import feature_program
from jaxclip_fs.engine.evaluate import evaluate_features
from jaxclip_fs.errors import DataError
from jaxclip_fs.experiment import protocol as protocol_lib
from jaxclip_fs.features import featfile
from jaxclip_fs.features.featfile import support_index
from jaxclip_fs.features.synthetic import make_task
from jaxclip_fs.features.text_classifier import prompt_classifier
from jaxclip_fs.clip.tokenizer import load_tokenizer
from jaxclip_fs.methods.base import as_arrays, logits
from jaxclip_fs.methods.search import accuracy
from jaxclip_fs.methods.task import make_evalset, make_task as task_of
from jaxclip_fs.train.fit import fit, select, task_key
from runs import fit_select_predict

from test_data_coop import DTD_JSON, PETS_JSON, _png
from test_sweep import GivenFeatures, Sources, config, read_records, run_sweep

# --- the official draws ----------------------------------------------------------------------


def dassl_generate_fewshot(items, num_shots):
    """Dassl's ``DatasetBase.generate_fewshot_dataset`` for one data source, written out on
    ``(impath, label)`` tuples: group by label in list order, ``random.sample`` per group,
    a group smaller than K kept whole (``repeat=False``). Uses the global ``random``."""
    tracker = collections.defaultdict(list)
    for item in items:
        tracker[item[1]].append(item)
    dataset = []
    for group in tracker.values():
        dataset.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
    return dataset


def reference_draw(split_json, shots, seed, chained=False):
    """What CoOp (reseeded: train, then val with min(K, 4)) or GDA (one stream over
    1, 2, 4, 8, 16 shots) draw: per label, the impaths in draw order."""
    data = json.load(open(split_json))
    train = [(path, label) for path, label, _ in data["train"]]
    val = [(path, label) for path, label, _ in data["val"]]
    state = random.getstate()
    try:
        random.seed(seed)
        for k in (1, 2, 4, 8, 16) if chained else ():
            if k == shots:
                break
            dassl_generate_fewshot(train, k)
        drawn_train = dassl_generate_fewshot(train, shots)
        drawn_val = dassl_generate_fewshot(val, min(shots, 4))
    finally:
        random.setstate(state)

    def by_label(items):
        out = collections.defaultdict(list)
        for path, label in items:
            out[label].append(path)
        return dict(out)
    return by_label(drawn_train), by_label(drawn_val)


def by_label(ids, labels, rows):
    out = collections.defaultdict(list)
    for row in np.asarray(rows).reshape(-1):
        out[int(labels[row])].append(ids[row])
    return dict(out)


@pytest.mark.parametrize("split_json", [DTD_JSON, PETS_JSON])
@pytest.mark.parametrize("shots, seed", [(1, 1), (4, 2), (16, 3)])
def test_official_draw_equals_dassl_on_real_split_files(split_json, shots, seed):
    data = json.load(open(split_json))
    ids = {s: [e[0] for e in data[s]] for s in ("train", "val")}
    labels = {s: np.asarray([e[1] for e in data[s]]) for s in ("train", "val")}
    for chained in (False, True):
        sampler = "official_chained" if chained else "official"
        train, val = official_fewshot(labels["train"], shots, seed, sampler=sampler,
                                      val_labels=labels["val"])
        want_train, want_val = reference_draw(split_json, shots, seed, chained)
        assert train.shape == (len(want_train), shots)
        assert by_label(ids["train"], labels["train"], train) == want_train
        if not chained:  # (GDA draws no validation set; CoOp's follows its train draw)
            assert by_label(ids["val"], labels["val"], val) == want_val
    if shots > 1:  # the chain moves the stream: another set than the reseeded draw
        assert want_train != reference_draw(split_json, shots, seed)[0]


def test_official_draws_are_not_nested_and_chain_visits_five_shot_counts():
    labels = np.repeat(np.arange(5), 20)
    one = official_fewshot(labels, 1, 1)[0]
    four = official_fewshot(labels, 4, 1)[0]
    assert one.shape == (5, 1) and four.shape == (5, 4)
    # each class's draw continues the one stream, so the 1-shot set is no subset of the 4-shot
    assert not all(np.isin(one[c, 0], four[c]) for c in range(5))
    with pytest.raises(DataError, match="visits \\[1, 2, 4, 8, 16\\] shots; 3 asked"):
        official_fewshot(labels, 3, 1, sampler="official_chained")
    short = np.repeat(np.arange(5), [20, 20, 3, 20, 20])
    with pytest.raises(DataError, match="class '2' \\(index 2\\) has 3 train images; 4 shots"):
        official_fewshot(short, 4, 1)


# --- CoOp's pickled few-shot sets ------------------------------------------------------------


class _Datum:
    """Dassl's ``Datum`` as CoOp pickles it
    (``_impath``, ``_label``, ``_domain``, ``_classname``)."""

    def __init__(self, impath="", label=0, domain=0, classname=""):
        self._impath, self._label, self._domain, self._classname = impath, label, domain, classname


@pytest.fixture()
def dassl_pickler(monkeypatch):
    """``dump(obj, path)`` pickling :class:`_Datum` s as ``dassl.data.datasets.base_dataset.Datum``;
    the fake Dassl modules are gone again before the test reads (reading needs no Dassl)."""
    names = ["dassl", "dassl.data", "dassl.data.datasets", "dassl.data.datasets.base_dataset"]
    modules = {name: types.ModuleType(name) for name in names}
    datum = type("Datum", (_Datum,), {"__module__": names[-1], "__qualname__": "Datum"})
    modules[names[-1]].Datum = datum

    def dump(obj, path):
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f)
        for name in names:
            monkeypatch.delitem(sys.modules, name)
    dump.Datum = datum
    return dump


@pytest.fixture()
def pets_root(tmp_path):
    """oxford_pets with its real split file, CoOp's layout; a few images present."""
    folder = tmp_path / "oxford_pets"
    os.makedirs(folder)
    shutil.copy(PETS_JSON, folder)
    data = json.load(open(PETS_JSON))
    for split in ("train", "val", "test"):
        relpath, label, _ = data[split][0]
        _png(str(folder / "images" / relpath), label)
    return tmp_path


def _coop_file(dump, dataset, shots, seed, train_rows, val_rows):
    """A CoOp pickle of given rows, with another machine's absolute paths."""
    def datum(split, row):
        s = dataset.split(split)
        return dump.Datum(impath=f"/home/someone/DATA/oxford_pets/images/{s.ids[row]}",
                          label=int(s.labels[row]), classname="x")
    path = os.path.join(dataset.source[len("coop:"):], "split_fewshot",
                        f"shot_{shots}-seed_{seed}.pkl")
    dump({"train": [datum("train", r) for r in np.asarray(train_rows).reshape(-1)],
          "val": [datum("val", r) for r in val_rows]}, path)
    return path


def test_coop_pickle_is_read_without_dassl_and_used_by_official(pets_root, dassl_pickler,
                                                                capsys):
    pets = get_dataset("oxford_pets", data_root=str(pets_root))
    train_labels = pets.split("train").labels
    # another draw than official_fewshot's for (2, 1): the file, not the sampler, decides
    rows, val = official_fewshot(train_labels, 2, 99, val_labels=pets.split("val").labels)
    path = _coop_file(dassl_pickler, pets, 2, 1, rows, val)
    assert "dassl" not in sys.modules
    items = read_fewshot_pkl(path)
    assert len(items["train"]) == 37 * 2
    assert items["train"][0].label == int(train_labels[rows[0, 0]])
    got_train, got_val, origin = official_sets(pets, "official", 2, 1)
    np.testing.assert_array_equal(got_train, rows)
    np.testing.assert_array_equal(got_val, val)
    assert origin == f"CoOp file {path}"
    computed = official_sets(pets, "official", 2, 2)  # no file for seed 2: drawn
    np.testing.assert_array_equal(computed[0], official_fewshot(train_labels, 2, 2)[0])
    chained = official_sets(pets, "official_chained", 2, 1)  # GDA's draw never reads CoOp's
    np.testing.assert_array_equal(chained[0], official_fewshot(train_labels, 2, 1,
                                                               sampler="official_chained")[0])
    # the CLI lists that set's images, class by class
    assert cli.main(["datasets", "oxford_pets", "--data-root", str(pets_root), "--shots", "2",
                     "--seed", "1", "--sampler", "official", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    ids = pets.split("train").ids
    assert [p.split("/images/")[-1] for p in listed] == [ids[r] for r in rows.reshape(-1)]


def test_coop_pickle_refuses_other_classes_and_wrong_labels(pets_root, dassl_pickler, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"train": [Evil()]}))
    with pytest.raises(DataError, match="only Dassl's Datum is read") as info:
        read_fewshot_pkl(evil)
    assert str(evil) in str(info.value) and "system" in str(info.value)
    assert not marker.exists()
    pets = get_dataset("oxford_pets", data_root=str(pets_root))
    rows, val = official_fewshot(pets.split("train").labels, 1, 1,
                                 val_labels=pets.split("val").labels)
    path = _coop_file(dassl_pickler, pets, 1, 1, rows, val)
    items = read_fewshot_pkl(path)["train"]
    wrong = [dassl_pickler.Datum(impath=d.impath, label=d.label) for d in items]
    wrong[3]._label = (wrong[3]._label + 1) % 37
    dassl_pickler({"train": wrong}, path)
    with pytest.raises(DataError, match="has label .*, the split says"):
        coop_fewshot(pets, 1, 1)
    dassl_pickler({"train": [dassl_pickler.Datum(impath="/x/images/nope.jpg", label=0)]}, path)
    with pytest.raises(DataError, match="nope.jpg is not in the split"):
        coop_fewshot(pets, 1, 1)


# --- where selection looks -------------------------------------------------------------------

C = 4
FS = make_task(7, num_classes=C, dim=8, shots=4, views=2, val_per_class=5, test_per_class=7,
               dataset="oxford_pets")
VAL, TEST = FS.val.shape[0], FS.test.shape[0]


@pytest.fixture()
def seen(monkeypatch):
    """The number of rows of every set the feature program fits and searches on (at trace)."""
    calls = []
    real_fit, real_select = feature_program.fit, feature_program.select

    def fit_spy(method, key, task, evalset, hp, **kw):
        calls.append(("fit", method.name, None if evalset is None else evalset.features.shape[0]))
        return real_fit(method, key, task, evalset, hp, **kw)

    def select_spy(method, params, task, evalset, hp, grid, **kw):
        calls.append(("select", method.name, evalset.features.shape[0]))
        return real_select(method, params, task, evalset, hp, grid, **kw)

    monkeypatch.setattr(feature_program, "fit", fit_spy)
    monkeypatch.setattr(feature_program, "select", select_spy)
    feature_program.compiled_program.cache_clear()  # trace afresh
    yield calls
    feature_program.compiled_program.cache_clear()


def _where(calls, method):
    """(rows the trainer's epochs were chosen on, rows the grid was searched on)."""
    found = {kind: rows for kind, name, rows in calls if name == method}
    return found["fit"], found["select"]


@pytest.mark.parametrize("protocol", ["fair", "fewshot"])
def test_fair_and_fewshot_never_select_on_test(seen, protocol):
    """Searched, trained with epoch selection, trained to the end; on ImageNet, where the
    official codes have no validation split (the engine uses a split carved from train)."""
    for name in ("tip_adapter", "tip_adapter_f", "clip_adapter"):
        trains = methods.get(name).trains
        record = evaluate_features(FS, name, shots=2, seed=1, dataset="imagenet",
                                   protocol=protocol, hp={"epochs": 2} if trains else (),
                                   log=None)
        rows = VAL if protocol == "fair" else C * 2  # whole val / min(K, 4) per class
        # the fit sees the epoch-selection set only where it selects an epoch
        assert _where(seen, name) == (rows if trains else None, rows), name
        assert record["val_size"] == rows and not record["selection"]["optimistic"]


#: Every registered method that reads features (image methods: tests/test_ldc_*.py).
FEATURE_METHODS = tuple(n for n in methods.names() if methods.get(n).inputs == "features")


def _short(method):
    """A trained method's loop cut to 2 epochs (or steps)."""
    return {method.training.length: 2} if method.trains else {}


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_validation_free_reads_no_validation_row(seen, name):
    """Nothing is selected: no validation row reaches a fit, a search or a score -- the
    program's validation arrays have no row at all -- and trained methods keep their final
    epoch at their fixed hyperparameters (the official defaults, or the module's choice)."""
    method = methods.get(name)
    hp = _short(method)
    record = evaluate_features(FS, name, shots=2, seed=1, dataset="imagenet",
                               protocol="validation_free", hp=hp, log=None)
    fits = {rows for kind, m, rows in seen if m == name and kind == "fit"}  # (each trace)
    assert fits == {None} and not [c for c in seen if c[1] == name and c[0] == "select"]
    assert record["protocol"] == "validation_free" and record["searched"] == []
    assert record["val_size"] == 0 and record["val_accuracy"] is None
    assert record["selection"] == {
        "protocol": "validation_free", "val_rows": "none", "search_on": "none",
        "epochs_on": "final" if method.trains else None, "reported": "final",
        "sampler": "nested", "prompts": False, "optimistic": False}
    fixed = method.resolve("imagenet", FS.dim, dict(hp), search=False)[0]
    assert record["hyperparameters"] == pytest.approx(fixed)
    for key, value in {**method.defaults("imagenet", FS.dim),
                       **method.hyper.validation_free, **dict(hp)}.items():
        assert record["hyperparameters"][key] == pytest.approx(value), (name, key)
    if method.trains and method.training.unit == "epochs":
        assert record["best_epoch"] == 1 and record["epoch_selection"] == "final"
    # shuffled validation labels and features cannot change a validation-free record
    rng = np.random.default_rng(3)
    noise = featfile.FeatureSet(**{**FS.__dict__, "val": rng.normal(size=FS.val.shape),
                                   "val_labels": rng.permutation(FS.val_labels)})
    a, b = (evaluate_features(fs, name, shots=2, seed=1, dataset="imagenet",
                              protocol="validation_free", hp=hp, log=None) for fs in (FS, noise))
    assert a["accuracy"] == b["accuracy"] and a["hyperparameters"] == b["hyperparameters"]


@pytest.mark.parametrize("name, dataset, fit_on, search_on", [
    ("tip_adapter_f", "oxford_pets", "test", "val"),  # best epoch on test, grid on val
    ("tip_adapter_f", "imagenet", "test", "test"),  # no official val: all on test
    ("ape_t", "oxford_pets", "test", "val"),
    ("clip_adapter", "oxford_pets", None, "val"),  # final epoch: no set for the fit
    ("gda", "oxford_pets", None, "val"),  # (no training)
    ("gda", "imagenet", None, "test"),
    ("tip_adapter", "imagenet", None, "test"),
])
def test_paper_selects_on_test_only_where_documented(seen, name, dataset, fit_on, search_on):
    method = methods.get(name)
    record = evaluate_features(FS, name, shots=2, seed=1, dataset=dataset, protocol="paper",
                               sampler="nested", hp={"epochs": 2} if method.trains else (),
                               log=None)
    size = {"val": VAL, "test": TEST, None: None}
    assert _where(seen, name) == (size[fit_on], size[search_on])
    selection = record["selection"]
    assert selection["search_on"] == search_on and record["protocol"] == "paper"
    assert selection["epochs_on"] == ({"test": "test", None: "final"}[fit_on]
                                      if method.trains else None)
    assert selection["optimistic"] == ("test" in (fit_on, search_on)
                                       or selection["reported"] != "final")


def test_paper_follows_an_official_code_that_selects_nothing(seen):
    """big_vision's ridge probe fixes its strength: under ``paper`` no validation row is read,
    on ImageNet neither (nothing is searched, so nothing moves to test)."""
    for dataset in ("oxford_pets", "imagenet"):
        record = evaluate_features(FS, "ridge", shots=2, seed=1, dataset=dataset,
                                   protocol="paper", log=None)
        assert {rows for kind, m, rows in seen if m == "ridge"} == {None}  # fit only, no set
        assert record["val_size"] == 0 and record["searched"] == []
        assert record["hyperparameters"] == {"l2_reg": 2.0 ** 10}
        selection = record["selection"]
        assert (selection["search_on"], selection["val_rows"]) == ("none", "none")
        assert selection["sampler"] == "nested" and not selection["optimistic"]


@pytest.mark.parametrize("name", ["tip_adapter", "tip_x", "gda"])
def test_fair_and_fewshot_search_the_whole_and_the_coop_validation_set(name):
    """On a 16-shot CLIP-like feature file: ``fair`` = search on every val row, ``fewshot`` =
    on CoOp's min(K, 4) per class; each computed directly with ``fit_select_predict``."""
    fs = make_task(11, num_classes=10, dim=32, shots=16, views=3, val_per_class=8,
                   test_per_class=20)
    method = methods.get(name)
    values, grid = method.resolve("synthetic", fs.dim, ())
    grid = {n: jnp.asarray(g, jnp.float32) for n, g in grid.items()}
    task = task_of(fs.train[:, support_index(fs, 16, 1)], fs.text, fs.logit_scale)
    test = make_evalset(fs.test, fs.test_labels)
    coop = coop_val_rows(fs.val_labels, 10, 16, 1)
    for protocol, rows in (("fair", np.arange(fs.val.shape[0])), ("fewshot", coop)):
        direct = fit_select_predict(method, task_key(1), task,
                                    make_evalset(fs.val[rows], fs.val_labels[rows]), test,
                                    as_arrays(values), grid)
        record = evaluate_features(fs, name, shots=16, seed=1, protocol=protocol, log=None)
        assert record["val_size"] == rows.size
        assert record["accuracy"] == pytest.approx(float(direct["test_accuracy"]), abs=1e-4)
        assert record["val_accuracy"] == pytest.approx(float(direct["val_accuracy"]), abs=1e-4)
        for key in grid:
            assert record["hyperparameters"][key] == pytest.approx(float(direct["hp"][key]))


def test_fair_selection_is_blind_to_the_test_labels():
    """Shuffled test labels change only the test accuracy, never what was selected."""
    rng = np.random.default_rng(0)
    shuffled = featfile.FeatureSet(**{**FS.__dict__,
                                      "test_labels": rng.permutation(FS.test_labels)})
    for name in ("tip_adapter_f", "ape_t", "gda"):
        hp = {"epochs": 3} if methods.get(name).trains else ()
        a = evaluate_features(FS, name, shots=4, seed=2, hp=hp, log=None)
        b = evaluate_features(shuffled, name, shots=4, seed=2, hp=hp, log=None)
        for field in ("hyperparameters", "best_epoch", "val_accuracy"):
            assert a[field] == b[field], (name, field)


# --- what the paper protocol reports ---------------------------------------------------------


def test_paper_tip_adapter_f_reports_the_best_of_epoch_and_search():
    """max(test accuracy of the test-chosen epoch, test accuracy after the val search),
    recomputed with the library's functions outside the engine."""
    name, shots, seed, epochs = "tip_adapter_f", 4, 3, 4
    record = evaluate_features(FS, name, shots=shots, seed=seed, protocol="paper",
                               sampler="nested", hp={"epochs": epochs}, log=None)
    method = methods.get(name)
    values, grid = method.resolve("oxford_pets", FS.dim, {"epochs": epochs})
    index = np.stack([class_order(FS.train_labels, c, seed)[:shots] for c in range(C)])
    task = task_of(FS.train[:, index], FS.text, FS.logit_scale)
    test = make_evalset(FS.test, FS.test_labels)
    val = make_evalset(FS.val, FS.val_labels)
    hp = as_arrays(values)
    params, info = fit(method, task_key(seed), task, test, hp,
                       batch_size=int(values["batch_size"]), max_epochs=epochs)
    chosen = select(method, params, task, val, hp,
                    {n: jnp.asarray(g, jnp.float32) for n, g in grid.items()})
    final = float(accuracy(logits(method, params, task, test.features, chosen["hp"]), test))
    best_epoch_score = float(info["best_score"])
    assert record["final_accuracy"] == pytest.approx(final, abs=1e-4)
    assert record["accuracy"] == pytest.approx(max(final, best_epoch_score), abs=1e-4)
    assert record["best_epoch"] == int(info["best_epoch"])
    assert record["selection"]["reported"] == "max_epoch_or_search"
    # one augmented view for 4 epochs: each item draws it; 6 for 4 epochs: a fresh one per epoch
    assert record["input_details"] == {"epoch_views": "drawn", "augmented_views": 1}
    many = make_task(7, num_classes=C, dim=8, shots=4, views=7, val_per_class=5,
                     test_per_class=7, dataset="oxford_pets")
    fresh = evaluate_features(many, name, shots=shots, seed=seed, hp={"epochs": epochs}, log=None)
    assert fresh["input_details"] == {"epoch_views": "fresh", "augmented_views": 6}


def test_paper_ldc_reports_the_best_head_on_test(tmp_path):
    out = tmp_path / "out"
    argv = ["run", "--dataset", "digits", "--backbone", "tiny-rn", "--weights", "random",
            "--method", "ldc", "--protocol", "paper", "--shots", "1", "--seeds", "1",
            "--views", "1", "--hp", "epochs=1", "batch_size=16",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet", "--no-report"]
    assert cli.main(argv) == 0
    (record,) = read_records(str(out)).values()
    heads = record["head_accuracies"]
    assert set(heads) == {"s", "mlp", "ada", "tot"}
    assert record["accuracy"] == max(record["final_accuracy"], *heads.values())
    assert record["selection"] == {
        "protocol": "paper", "val_rows": "full", "epochs_on": "final", "search_on": "val",
        "reported": "max_heads", "sampler": "official", "prompts": False, "optimistic": True}
    assert os.path.isdir(out / "records" / "paper" / "ldc")


# --- prompts ---------------------------------------------------------------------------------


def test_prompt_classifier_pools_templates_and_sentences(tmp_path):
    clip = load_clip("tiny-vit", "random")
    tokenizer = load_tokenizer(clip.source_dir)
    classnames, templates = ("sea_lion", "cat"), ("a photo of a {}.", "a {} picture.")
    prompts = {"sea lion": ["A sea lion on a rock.", "A wet grey sea lion."],
               "cat": ["A cat sleeping. " * 40]}  # over-long: truncated, as APE does
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(prompts))
    w = prompt_classifier(clip, tokenizer, classnames, templates, path, batch_size=4,
                          use_cache=False, progress=False)
    for c, name in enumerate(classnames):
        sentences = [t.format(name) for t in templates] + prompts[name.replace("_", " ")]
        tokens = tokenizer(sentences, context_length=clip.config.context_length, truncate=True)
        e = np.asarray(clip.model.apply(clip.params, tokens, method="encode_text"), np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        np.testing.assert_allclose(w[c], e.mean(0) / np.linalg.norm(e.mean(0)), atol=1e-5)
    path.write_text(json.dumps({"cat": ["A cat."]}))
    with pytest.raises(DataError, match="no prompt sentences for class 'sea lion'"):
        prompt_classifier(clip, tokenizer, classnames, templates, path, use_cache=False,
                          progress=False)


def test_prompts_reach_every_method_under_fair_and_ape_only_under_paper(tmp_path):
    """zero_shot's record accuracy is argmax of the classifier it was given."""
    rng = np.random.default_rng(1)
    other = rng.normal(size=FS.text.shape).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    fs = featfile.FeatureSet(**{**FS.__dict__, "text_prompts": other})
    prompts = tmp_path / "p.json"
    prompts.write_text("{}")
    cfg = config(methods=("zero_shot", "ape"), datasets=("oxford_pets",), shots=(2,), seeds=(1,),
                 protocols=("fair", "paper"), sampler="nested")
    cfg = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol,
                                                                prompts=str(prompts)))
    out = str(tmp_path / "out")
    run_sweep(out, cfg, sources=Sources(features=GivenFeatures({"oxford_pets": fs})))
    found = {(c.method, c.protocol): r for c, r in read_records(out).items()}

    def zero_shot_accuracy(text):
        return 100 * np.mean((FS.test @ text.T).argmax(1) == FS.test_labels)
    assert found["zero_shot", "fair"]["accuracy"] == pytest.approx(zero_shot_accuracy(other))
    assert found["zero_shot", "paper"]["accuracy"] == pytest.approx(zero_shot_accuracy(FS.text))
    assert found["zero_shot", "fair"]["selection"]["prompts"]
    assert not found["zero_shot", "paper"]["selection"]["prompts"]
    assert found["ape", "paper"]["selection"]["prompts"]


def test_rules_table():
    """Each method's paper rules follow its declared official protocol."""
    for name in methods.names():
        method = methods.get(name)
        official = method.official
        assert official is not None and official.source, name
        r = protocol_lib.rules("paper", method, "dtd")
        assert r.reported == official.reported and r.search_on == official.search_on
        on_imagenet = protocol_lib.rules("paper", method, "imagenet")
        if official.search_on == "none":  # (an official code that selects nothing: no split)
            assert on_imagenet.search_on == "none" and r.val_rows == "none" and not r.searches
        else:
            assert on_imagenet.search_on == "test"
        fair = protocol_lib.rules("fair", method, "imagenet")
        # (methods trained through the towers select nothing under any protocol)
        assert fair.search_on == ("none" if method.towers else "val")
        assert not fair.optimistic and fair.sampler == "nested"
        free = protocol_lib.rules("validation_free", method, "imagenet")
        assert (free.val_rows, free.search_on, free.reported) == ("none", "none", "final")
        assert free.epochs_on == ("final" if method.trains else None)
        assert not free.searches and not free.optimistic and free.sampler == "nested"
        # every shipped method has a fixed value for each searched hyperparameter
        values, grid = method.resolve("dtd", 64, search=False)
        assert grid == {} and set(method.names("search")) <= set(values)
